"""CutMix (Yun et al., ICCV 2019) as its official code does it (clovaai/CutMix-PyTorch, train.py, read at 2d8eb68).

Per batch, with probability `cutmix_prob` (a draw r = rand() < cutmix_prob; the reference's CIFAR recipe 0.5, its
ImageNet one 1.0; otherwise the batch trains as it is): lam ~ Beta(alpha, alpha) (the reference's `beta`: 1.0), a
partner for every image (a random permutation), and a box of int(H sqrt(1 - lam)) x int(W sqrt(1 - lam)) pixels
centred at (randint(H), randint(W)), its half-sides taken with integer halving off each side of the centre and
clipped to the image, as the reference (which names the first image axis W). Each image takes its partner's pixels
in the box, and lam is adjusted to the area kept, 1 - box area / (H W). The targets are mixed with the adjusted lam:
our loss is on soft targets, and with `train.loss=soft_ce` it is the reference's lam CE(out, a) + (1 - lam) CE(out, b).

Draws: r, lam and the box's centre from the run's numpy stream, the permutation from its torch stream (the reference's
np.random and torch.randperm), in the reference's order. It mixes the input only and never a hidden state; it trains
alone (a pack's fused step does not draw boxes). tests/test_methods.py checks it against the reference's own outputs,
recorded by tests/data/official/record_cutmix.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mm_repro.errors import UserError
from mm_repro.method.base import Method


def draw_box(height: int, width: int, lam: float, np_rng: np.random.RandomState) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the box, from lam and the centre drawn now: the reference's rand_bbox."""
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    centre_h, centre_w = np_rng.randint(height), np_rng.randint(width)
    top, bottom = (int(np.clip(centre_h + d, 0, height)) for d in (-(cut_h // 2), cut_h // 2))
    left, right = (int(np.clip(centre_w + d, 0, width)) for d in (-(cut_w // 2), cut_w // 2))
    return top, bottom, left, right


def cutmix(x: torch.Tensor, targets: torch.Tensor, settings: Any, rng: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch and its one-hot targets after CutMix (unchanged when this batch's draw says no)."""
    if not rng.numpy.rand(1)[0] < settings.cutmix_prob:
        return x, targets
    lam = rng.numpy.beta(settings.alpha, settings.alpha)
    index = torch.randperm(len(x), generator=rng.torch, device=rng.torch.device)
    top, bottom, left, right = draw_box(x.shape[2], x.shape[3], lam, rng.numpy)
    x = x.clone()
    x[:, :, top:bottom, left:right] = x[index, :, top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / (x.shape[2] * x.shape[3])
    return x, targets * kept + targets[index] * (1.0 - kept)


def _check(settings: Any) -> None:
    if not 0.0 <= settings.cutmix_prob <= 1.0:
        raise UserError(f"method.cutmix_prob={settings.cutmix_prob} must be a probability in [0, 1] (official: 0.5)")


METHOD = Method(
    "cutmix",
    "CutMix",
    mixes="input",
    interpolates=False,
    packable=False,
    reads=("method.alpha", "method.cutmix_prob"),
    row_keys=("alpha", "cutmix_prob"),
    rank=4,
    transform=cutmix,
    check=_check,
)
