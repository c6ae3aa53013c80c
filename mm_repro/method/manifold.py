"""Manifold mixup (Verma et al., ICML 2019): the official interpolation at a point k drawn per batch from the eligible
set S (`method.layers`), the input included (method.mixing, training.step.MixedForward); `method.block_gradient` is
the paper's gradient-blocked ablation."""

from mm_repro.method.base import Method

METHOD = Method(
    "manifold",
    "Manifold Mixup",
    mixes="hidden",
    interpolates=True,
    packable=True,
    reads=("method.alpha", "method.layers", "method.pairing", "method.block_gradient"),
    row_keys=("alpha", "layers"),
    rank=3,
)
