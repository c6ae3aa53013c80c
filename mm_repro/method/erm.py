"""ERM ("No Mixup" in the paper's tables): one-hot targets, the same loss and schedule as the mixing methods."""

from mm_repro.method.base import Method

METHOD = Method("erm", "No Mixup", mixes="no", interpolates=False, packable=True, reads=(), row_keys=(), rank=0)
