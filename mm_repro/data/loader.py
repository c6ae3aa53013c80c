"""Batches resident on the training device: the whole split lives there as uint8, padded once; a crop is one copy
through a view of every window, the flip a `torch.where`, the normalisation the official `x / 255` then per-channel
constants (docs/performance.md §2). Shuffling and augmentation draw from the run's own generator."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from mm_repro.config import DatasetConfig
from mm_repro.data.types import Arrays


def crop_flip(
    padded: torch.Tensor,
    oy: torch.Tensor,
    ox: torch.Tensor,
    flips: torch.Tensor | None,
    size: int,
    images: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop a size x size window at (oy, ox) from padded image `images[i]` (default: the i-th), then mirror it where
    `flips`: one copy through a view of every window (`unfold`), then a branch-free flip.

    The unfold view costs nothing, and indexing it copies rows of `size` contiguous pixels: 2.5-3x faster on a CPU
    than a gather through a per-pixel index (docs/benchmarks.md), and no host sync on a GPU."""
    windows = padded.unfold(2, size, 1).unfold(3, size, 1)  # (N, C, span, span, size, size), a view
    which = torch.arange(len(oy), device=padded.device) if images is None else images
    out = windows[which, :, oy, ox]
    if flips is not None:
        out = torch.where(flips[:, None, None, None], out.flip(3), out)
    return out


class DeviceLoader:
    """Batches of one split, resident on `device`: shuffled and augmented (train) or in order (test)."""

    def __init__(
        self,
        split: Arrays,
        cfg: DatasetConfig,
        batch_size: int,
        device: torch.device,
        train: bool,
        channels_last: bool = False,
    ) -> None:
        self.train = train
        self.batch_size = batch_size
        self.size = split.images.shape[-1]
        self.padding = cfg.crop_padding if train else 0
        self.flip = cfg.flip and train
        images = split.images.to(device)
        # Zero padding once for the whole split, as RandomCrop(padding=p) pads each image with 0.
        self.images = F.pad(images, [self.padding] * 4) if self.padding else images
        self.labels = split.labels.to(device)
        self.mean = torch.tensor(cfg.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(cfg.std, device=device).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return self.num_batches(len(self.labels))

    def num_batches(self, num_images: int) -> int:
        """Batches in an epoch over `num_images` images (the last one may be smaller, as the official loader's)."""
        return -(-num_images // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def order(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """This epoch's order: a random permutation for training (from the run's generator), identity for testing."""
        n = len(self.labels)
        device = self.labels.device
        return torch.randperm(n, device=device, generator=generator) if self.train else torch.arange(n, device=device)

    def augment(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images `idx`, randomly cropped (offsets uniform in [0, 2p]) and, if enabled, flipped with probability 1/2."""
        n, device = len(idx), idx.device
        span = self.images.shape[-1] - self.size + 1
        oy = torch.randint(0, span, (n,), device=device, generator=generator)
        ox = torch.randint(0, span, (n,), device=device, generator=generator)
        flips = torch.rand(n, device=device, generator=generator) < 0.5 if self.flip else None
        return crop_flip(self.images, oy, ox, flips, self.size, idx)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float in the official input space: (x / 255 - mean) / std, as ToTensor + Normalize."""
        x = (images.float() / 255 - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch(
        self, order: torch.Tensor, i: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of batch i of `order`, augmented with `generator` when training."""
        idx = order[i * self.batch_size : (i + 1) * self.batch_size]
        augmented = self.train and (self.padding or self.flip)
        images = self.augment(idx, generator) if augmented else self.images[idx]
        return self.normalize(images), self.labels[idx]

    def batches(
        self, order: torch.Tensor, start: int = 0, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, labels) for batches start, start + 1, ... of `order`."""
        for i in range(start, self.num_batches(len(order))):
            yield self.batch(order, i, generator)
