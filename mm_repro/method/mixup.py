"""Input mixup (Zhang et al., ICLR 2018): the official interpolation at the input only (method.mixing; point 0, or
"input" on a model whose points are named)."""

from mm_repro.method.base import Method

METHOD = Method(
    "mixup",
    "Input Mixup",
    mixes="input",
    interpolates=True,
    packable=True,
    reads=("method.alpha", "method.layers", "method.pairing"),
    row_keys=("alpha",),
    rank=2,
)
