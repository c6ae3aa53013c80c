"""Model registry: `build(name, num_classes, **options)` and the names users type (`model=...`)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mm_repro.models.preact_resnet import preactresnet
from mm_repro.models.wide_resnet import WideResNet

# name -> (family, builder(num_classes, width)); the family picks the protocol's schedule (conf/protocol).
REGISTRY: dict[str, tuple[str, Callable[..., nn.Module]]] = {
    "preactresnet18": ("preact", lambda c, width=64: preactresnet(18, c, width)),
    "preactresnet34": ("preact", lambda c, width=64: preactresnet(34, c, width)),
    "preactresnet50": ("preact", lambda c, width=64: preactresnet(50, c, width)),
    "preactresnet101": ("preact", lambda c, width=64: preactresnet(101, c, width)),
    "preactresnet152": ("preact", lambda c, width=64: preactresnet(152, c, width)),
    "wrn28_10": ("wrn", lambda c, width=16: WideResNet(28, 10, c, width)),
    "wrn28_2": ("wrn", lambda c, width=16: WideResNet(28, 2, c, width)),
}

MIXING_POINTS = {"preact": (0, 1, 2, 3, 4), "wrn": (0, 1, 2, 3)}


def build(name: str, num_classes: int, **options: int) -> nn.Module:
    """Build model `name` for `num_classes` classes; `width` (initial channels) is the only option."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name][1](num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
