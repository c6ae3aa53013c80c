"""Training losses on soft targets. Both run in fp32, outside autocast (BCE is not autocast-safe).

- `bce_softmax`, the official code's loss for every method, ERM included: `nn.BCELoss()(softmax(logits), y)`,
  the mean over N x C entries (paper.md 4.1). Its cross-entropy-like part is divided by C, so swapping it for CE
  changes the effective learning rate (paper.md 6.9).
- `soft_ce`: cross-entropy with soft targets, -sum_c y_c log softmax(logits)_c averaged over the batch; equal to
  Zhang et al.'s `lam * CE(out, y_a) + (1 - lam) * CE(out, y_b)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def bce_softmax(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between softmax probabilities and soft targets, mean over N x C (official)."""
    return F.binary_cross_entropy(F.softmax(logits.float(), dim=1), targets.float())


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with soft targets, mean over the batch."""
    return F.cross_entropy(logits.float(), targets.float())


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce_softmax": bce_softmax,
    "soft_ce": soft_ce,
}
