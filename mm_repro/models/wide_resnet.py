"""Wide-ResNet 28-10 and 28-2 exactly as the official Manifold Mixup code builds them.

Official code: vikasverma1077/manifold_mixup `supervised/models/wide_resnet.py` (docs/protocol.md §2, §4).
Kept as it is, because the paper's WRN numbers come from it: every conv has a bias, the stride sits on the
block's second conv, dropout is removed, the shortcut sees the raw block input, and the final BatchNorm has
`momentum=0.9` (in PyTorch's convention running statistics are then ~90% the last batch; docs/protocol.md §4).
`conv_init` is never applied in the official code, so PyTorch's init of its era is used here too: today's for the
convolutions, U(0, 1) BatchNorm weights by default (`bn_init`, models/staged.py).

Mixing points: 0 = the input, i = the output of `layer{i}` (i = 1..3). The official code mixes at k in {0, 1, 2}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mm_repro.models.staged import BN_INITS, StagedNet


class WideBasic(nn.Module):
    """The official `wide_basic` block without dropout."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.bn1 = norm(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=True)
        self.bn2 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(StagedNet):
    """The official `Wide_ResNet`; `width` is the stem's channels (16 officially), stages are width*k*(1, 2, 4)."""

    num_stages = 3

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        width: int = 16,
        bn_init: str = "uniform",
        stem_stride: int = 1,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.norm, self.dropout = BN_INITS[bn_init], dropout
        n = (depth - 4) // 6
        stages = [width, width * widen_factor, 2 * width * widen_factor, 4 * width * widen_factor]
        self.in_planes = stages[0]
        self.conv1 = nn.Conv2d(in_channels, stages[0], 3, stride=stem_stride, padding=1, bias=True)
        self.layer1 = self._wide_layer(stages[1], n, stride=1)
        self.layer2 = self._wide_layer(stages[2], n, stride=2)
        self.layer3 = self._wide_layer(stages[3], n, stride=2)
        self.bn1 = self.norm(stages[3], momentum=0.9)  # official value, see the module docstring
        self.linear = nn.Linear(stages[3], num_classes)

    def _wide_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(WideBasic(self.in_planes, planes, s, self.norm))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(F.relu(self.bn1(h)), min(8, h.shape[-1]))  # official 8 (the 8 x 8 map); MNIST's is 7 x 7
        return self.linear(self.drop(h.flatten(1)))
