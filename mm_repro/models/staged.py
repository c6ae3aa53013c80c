"""What PreActResNet and WideResNet share: a stem, residual stages `layer1..layerS` and a head, with mixing points
0 (the input) and i (the output of stage i). The stem belongs to stage 1, as in the official code's forward, so that
mixing point 1 is `layer1`'s output.

BatchNorm initialisation (`bn_init`): PyTorch up to 1.1 drew every BatchNorm weight from U(0, 1) (its 1.1.0
documentation says so; pytorch issue 12259 asked for ones, which later versions use). The official code dates from
that era (`Variable`, `.cuda(async=True)`, torch 1.0.0 in its README) and sets no init of its own, so the paper's runs
started from U(0, 1): `uniform`, our default. `UniformBatchNorm2d` draws it in its constructor, as torch 1.0's
`reset_parameters` did, so the draws interleave with the convolutions' in construction order."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class UniformBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d initialised as in PyTorch <= 1.1: weight ~ U(0, 1), bias 0 (same state_dict as BatchNorm2d)."""

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.uniform_(self.weight)
            nn.init.zeros_(self.bias)


BN_INITS: dict[str, type[nn.BatchNorm2d]] = {"uniform": UniformBatchNorm2d, "ones": nn.BatchNorm2d}


class StagedNet(nn.Module):
    """Subclasses define `conv1` (the stem), `layer1..layer{num_stages}` and `head`."""

    num_stages: int

    @classmethod
    def points(cls) -> tuple[int, ...]:
        """The mixing points: 0 (the input) and 1..num_stages."""
        return tuple(range(cls.num_stages + 1))

    @property
    def mixing_points(self) -> tuple[int, ...]:
        return self.points()

    def stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Residual stage i (1..num_stages); stage 1 includes the stem."""
        if i == 1:
            return self.layer1(self.conv1(h))
        return getattr(self, f"layer{i}")(h)

    dropout: float = 0.0

    def drop(self, features: torch.Tensor) -> torch.Tensor:
        """Dropout with probability `dropout` on the pooled features, before the final linear layer: our choice for
        the paper's dropout baseline (the official `--dropout` flag, "dropout in final layer", is ignored by these
        models; docs/reproducing.md, "Protocols"). It draws from torch's default generator, which a training step lends
        the run's own noise stream (mm_repro.training.randomness.RunRandom.sampling)."""
        return F.dropout(features, self.dropout, self.training) if self.dropout else features

    def head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_until(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The hidden state at mixing point k (k = 0 returns the input itself)."""
        for i in range(1, k + 1):
            x = self.stage(i, x)
        return x

    def forward_from(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Logits from the hidden state at mixing point k."""
        for i in range(k + 1, self.num_stages + 1):
            h = self.stage(i, h)
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)
