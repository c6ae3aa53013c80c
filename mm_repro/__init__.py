"""mm_repro: Manifold Mixup (Verma et al., ICML 2019) reproduced on today's PyTorch."""

__version__ = "0.2.0"  # pyproject.toml reads it; CHANGELOG.md says what each version holds
