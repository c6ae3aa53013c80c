"""mm_repro: Manifold Mixup (Verma et al., ICML 2019) reproduced on today's PyTorch."""

__version__ = "0.1.0"
