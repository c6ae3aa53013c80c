"""Mixup and Manifold Mixup as tensor operations (Zhang et al., ICLR 2018; Verma et al., ICML 2019, section 2).

Knows nothing of models: per batch one mixing point `k` uniform over the eligible set S (`layers`), one
`lam ~ Beta(alpha, alpha)` and one pairing; hidden states and soft targets are mixed with the same lam and pairing,
and gradients flow through both members of each pair into the layers before k.

The draws follow the official code (docs/protocol.md §2, `preresnet.py` and `mixup_process`) in order and stream: k
first, with python's `random.randint(0, len(S) - 1)` (input mixup draws no k: it is 0); then lam with
`np.random.beta(alpha, alpha)`, used as float32; then the partner of each example with `np.random.permutation(batch)`.
Each run passes its own generators (mm_repro.training.randomness.RunRandom). With `pairing=flip` the partner is the
reversed batch instead: the batch is already in random order, so that is the same distribution, and a run alone needs
no index tensor and no scatter in the backward (docs/performance.md §4). A pack (training.trainers.packed) still builds
one index per run for flip, as it gathers every run's partners in one op.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MixSpec:
    """What a mixing method is: the Beta parameter, the eligible set S and the pairing (permutation | flip)."""

    alpha: float
    layers: tuple[int, ...]
    pairing: str = "permutation"


@dataclass
class MixDraw:
    """What one batch is mixed with: mixing point k, weight lam, and the partners (None: the reversed batch)."""

    k: int
    lam: float
    index: np.ndarray | None


def draw(spec: MixSpec, batch_size: int, py: random.Random, np_rng: np.random.RandomState) -> MixDraw:
    """k (python), then lam (numpy), then the permutation (numpy): the official code's order and streams."""
    layers = spec.layers
    k = layers[py.randint(0, len(layers) - 1)] if len(layers) > 1 else layers[0]
    lam = float(np.float32(np_rng.beta(spec.alpha, spec.alpha)))
    index = np_rng.permutation(batch_size) if spec.pairing == "permutation" else None
    return MixDraw(k, lam, index)


def partner(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Each example's partner: x[index], or the reversed batch when index is None."""
    return x.flip(0) if index is None else x[index]


def interpolate(x: torch.Tensor, lam: float | torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """`x * lam + x[index] * (1 - lam)`, the official `mixup_process` expression: the only place it is written.

    `lam` may be a float or a 0-dim float32 tensor (which keeps bf16 hidden states in bf16)."""
    return x * lam + partner(x, index) * (1 - lam)


def mix(
    h: torch.Tensor, targets: torch.Tensor, lam: float | torch.Tensor, index: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states and the soft targets, mixed alike (same lam, same partners), as `mixup_process`."""
    return interpolate(h, lam, index), interpolate(targets, lam, index)
