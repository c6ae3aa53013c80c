"""PreAct ResNet 18/34/50/101/152 exactly as the official Manifold Mixup code builds them.

Official code: vikasverma1077/manifold_mixup `supervised/models/preresnet.py` (docs/protocol.md §2).
It departs from He et al. (2016) in two places that we keep, because the paper's numbers come from it:
the 3x3 stem conv has no BN-ReLU after it, and there is no BN-ReLU before the 4x4 average pooling.
Attribute names (`conv1`, `layer1`..`layer4`, `linear`, `shortcut`) follow the official code, so an official
state_dict loads as it is.

Mixing points: 0 = the input, i = the output of residual stage `layer{i}` (i = 1..4). The official code mixes at
k in {0, 1, 2} (and has a dead branch for 3); stage 4 is offered for completeness.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mm_repro.models.staged import BN_INITS, StagedNet


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    """The official 1x1 projection shortcut (applied to the pre-activated input), where shapes change."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False))


class _PreActUnit(nn.Module):
    """What both official blocks share: BN-ReLU first, then the residual branch, plus the shortcut, which is the 1x1
    projection of the *pre-activated* input where shapes change and the raw input otherwise."""

    expansion: int

    def _add_shortcut(self, in_planes: int, planes: int, stride: int) -> None:
        projection = _projection(in_planes, self.expansion * planes, stride)
        if projection is not None:  # created last, as in the official code, so initialisation draws in its order
            self.shortcut = projection

    def residual(self, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        return self.residual(out) + shortcut


class PreActBlock(_PreActUnit):
    """Pre-activation basic block (two 3x3 convs)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.bn1 = norm(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self._add_shortcut(in_planes, planes, stride)

    def residual(self, out: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn2(self.conv1(out))))


class PreActBottleneck(_PreActUnit):
    """Pre-activation bottleneck block (1x1, 3x3, 1x1), used by PreActResNet50/101/152."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.bn1 = norm(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = norm(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, 1, bias=False)
        self._add_shortcut(in_planes, planes, stride)

    def residual(self, out: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return self.conv3(F.relu(self.bn3(out)))


class PreActResNet(StagedNet):
    """The official PreActResNet; `width` is the official `initial_channels` (64 in every paper run); `bn_init` is
    `uniform` (PyTorch <= 1.1, the official code's era) or `ones` (today's PyTorch), see models/staged.py;
    `stem_stride` the first convolution's stride (the official `stride`: 2 for Tiny-ImageNet, so a 64 x 64 input
    reaches the 4 x 4 pooling as a 32 x 32 one does with 1); `dropout` see StagedNet.drop."""

    num_stages = 4

    def __init__(
        self,
        block: type[nn.Module],
        num_blocks: list[int],
        num_classes: int,
        width: int = 64,
        bn_init: str = "uniform",
        stem_stride: int = 1,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.norm, self.dropout = BN_INITS[bn_init], dropout
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stem_stride, padding=1, bias=False)
        self.layer1 = self._make_layer(block, width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, num_blocks[3], stride=2)
        self.linear = nn.Linear(width * 8 * block.expansion, num_classes)

    def _make_layer(self, block: type[nn.Module], planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s, self.norm))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(h, 4)  # official: no BN-ReLU before pooling (the 4 x 4 map of 32 x 32 and 28 x 28 images)
        return self.linear(self.drop(h.flatten(1)))


def preactresnet(depth: int, num_classes: int, **options: Any) -> PreActResNet:
    """PreActResNet of the given depth (18, 34, 50, 101, 152) with the official block counts."""
    blocks = {
        18: (PreActBlock, [2, 2, 2, 2]),
        34: (PreActBlock, [3, 4, 6, 3]),
        50: (PreActBottleneck, [3, 4, 6, 3]),
        101: (PreActBottleneck, [3, 4, 23, 3]),
        152: (PreActBottleneck, [3, 8, 36, 3]),
    }
    block, num_blocks = blocks[depth]
    return PreActResNet(block, num_blocks, num_classes, **options)
