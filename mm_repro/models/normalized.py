"""A trained model that takes what a user has: pixels in [0, 1] (what torchvision's ToTensor gives), normalised inside
with its run's mean and std, as training normalised them on the device (data.loader). `api.load_model` returns one;
`.net` is the model as trained (it takes normalised input and keeps forward_until / forward_from)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalized(nn.Module):
    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], image_shape: Sequence[int]) -> None:
        super().__init__()
        self.net, self.image_shape = net, tuple(image_shape)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images (N, C, H, W) of pixels in [0, 1]."""
        return self.net((pixels - self.mean) / self.std)
