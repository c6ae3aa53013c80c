"""Mixup and Manifold Mixup as tensor operations (Zhang et al., ICLR 2018; Verma et al., ICML 2019, section 2).

Knows nothing of models: per batch one `lam ~ Beta(alpha, alpha)`, one mixing point `k` uniform over the
eligible set S (`layers`), one pairing; hidden states and soft targets are mixed with the same lam and pairing.
As in the official code (paper.md 2), lam is drawn with numpy and k with python's `random` (in that order), lam is
used as float32, and gradients flow through both members of each pair into the layers before k. The partner is a
random permutation of the batch (official) or, with `pairing=flip`, the reversed batch: the batch is already in
random order, so that is the same distribution without an index tensor (performance.md 4).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MixDraw:
    """What one batch is mixed with: mixing point k, weight lam and the partner of each example."""

    k: int
    lam: float
    index: torch.Tensor


def draw(layers: list[int], alpha: float, batch_size: int, pairing: str, device: torch.device) -> MixDraw:
    """Draw lam (numpy), k (python random), then the pairing (torch), in the official code's order."""
    lam = float(np.float32(np.random.beta(alpha, alpha)))
    k = layers[random.randrange(len(layers))]
    if pairing == "flip":
        index = torch.arange(batch_size - 1, -1, -1, device=device)
    else:
        index = torch.randperm(batch_size, device=device)
    return MixDraw(k, lam, index)


def mix(
    h: torch.Tensor, targets: torch.Tensor, lam: float | torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """lam * x + (1 - lam) * x[index] for the hidden states and for the soft targets alike.

    `lam` may be a float or a 0-dim float32 tensor (which keeps bf16 hidden states in bf16)."""
    return lam * h + (1 - lam) * h[index], lam * targets + (1 - lam) * targets[index]
