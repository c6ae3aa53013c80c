"""Cutout as the official `--train cutout` does it (`Cutout(1, args.cutout).apply(input)` in its utils.py, read in the
official repository; docs/protocol.md §2): for each batch, one hole centre y = randint(H), then x = randint(W), from
the run's numpy stream (the official global `np.random`); the square of side `length` around it, clipped to the image
(`int(clip(y - length / 2, 0, H))` to `int(clip(y + length / 2, 0, H))`, likewise for x), is multiplied by 0 in every
image and channel of the batch. The input is already normalised, so the hole is 0 in normalised space (the channel
mean), not black."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mm_repro.errors import UserError
from mm_repro.method.base import Method


def draw_hole(height: int, width: int, length: int, np_rng: np.random.RandomState) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2) of the batch's hole: the official draws, in the official order."""
    y = np_rng.randint(height)
    x = np_rng.randint(width)
    y1, y2 = int(np.clip(y - length / 2, 0, height)), int(np.clip(y + length / 2, 0, height))
    x1, x2 = int(np.clip(x - length / 2, 0, width)), int(np.clip(x + length / 2, 0, width))
    return y1, y2, x1, x2


def cutout(x: torch.Tensor, length: int, np_rng: np.random.RandomState) -> torch.Tensor:
    """The batch `x` (N, C, H, W) times the official mask: 0 inside the hole, 1 elsewhere."""
    y1, y2, x1, x2 = draw_hole(x.shape[2], x.shape[3], length, np_rng)
    mask = torch.ones(x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
    mask[y1:y2, x1:x2] = 0.0
    return x * mask


def _transform(x: torch.Tensor, targets: torch.Tensor, settings: Any, rng: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return cutout(x, settings.cutout, rng.numpy), targets


def _check(settings: Any) -> None:
    if settings.cutout < 1:
        raise UserError(f"method.cutout={settings.cutout}: the hole's side must be >= 1 pixel (official: 16)")


METHOD = Method(
    "cutout",
    "Cutout",
    mixes="no",
    interpolates=False,
    packable=False,  # a hole in the input: the pack's fused step does not draw it
    reads=("method.cutout",),
    row_keys=(),
    rank=1,
    transform=_transform,
    check=_check,
)
