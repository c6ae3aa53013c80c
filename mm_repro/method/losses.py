"""Training losses on soft targets. Both run in fp32, outside autocast (BCE is not autocast-safe).

- `bce_softmax`, the official code's loss for every method, ERM included: `nn.BCELoss()(softmax(logits), y)`,
  the mean over N x C entries (docs/protocol.md §3). Its cross-entropy-like part is divided by C, so swapping it for CE
  changes the effective learning rate (docs/protocol.md §4).
- `soft_ce`: cross-entropy with soft targets, -sum_c y_c log softmax(logits)_c averaged over the batch; equal to
  Zhang et al.'s `lam * CE(out, y_a) + (1 - lam) * CE(out, y_b)`.

A diverged run must stop cleanly at the epoch's end (training.loop), so no loss may assert: `F.binary_cross_entropy`
checks that its input lies in [0, 1], which a NaN fails, and on CUDA that check is a device-side assert that kills the
process before any record is written. `bce_softmax` therefore feeds it 0.5 wherever the softmax is not finite and
returns NaN for such a batch; for finite logits it is bit for bit the official value (tested), with no host sync.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def bce_softmax(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between softmax probabilities and soft targets, mean over N x C (official); NaN, never an
    assert, when the logits are not finite."""
    p = F.softmax(logits.float(), dim=1)
    finite = torch.isfinite(p).all()
    loss = F.binary_cross_entropy(torch.where(finite, p, 0.5), targets.float())
    return torch.where(finite, loss, torch.nan)


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with soft targets, mean over the batch."""
    return F.cross_entropy(logits.float(), targets.float())


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce_softmax": bce_softmax,
    "soft_ce": soft_ce,
}
