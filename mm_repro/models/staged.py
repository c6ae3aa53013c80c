"""What PreActResNet and WideResNet share: a stem, residual stages `layer1..layerS` and a head, with mixing points
0 (the input) and i (the output of stage i). The stem belongs to stage 1, as in the official code's forward, so that
mixing point 1 is `layer1`'s output."""

from __future__ import annotations

import torch
from torch import nn


class StagedNet(nn.Module):
    """Subclasses define `conv1` (the stem), `layer1..layer{num_stages}` and `head`."""

    num_stages: int

    @property
    def mixing_points(self) -> tuple[int, ...]:
        return tuple(range(self.num_stages + 1))

    def _stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if i == 1:
            return self.layer1(self.conv1(h))
        return getattr(self, f"layer{i}")(h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_until(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The hidden state at mixing point k (k = 0 returns the input itself)."""
        for i in range(1, k + 1):
            x = self._stage(i, x)
        return x

    def forward_from(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Logits from the hidden state at mixing point k."""
        for i in range(k + 1, self.num_stages + 1):
            h = self._stage(i, h)
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)
