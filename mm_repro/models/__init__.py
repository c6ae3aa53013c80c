"""Model registry: `build(name, num_classes, **options)` and the names users type (`model=...`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from mm_repro.models.preact_resnet import PreActResNet, preactresnet
from mm_repro.models.staged import BN_INITS, StagedNet
from mm_repro.models.wide_resnet import WideResNet


@dataclass(frozen=True)
class ModelSpec:
    """A model name's family (which picks the protocol's schedule, conf/protocol), its class and its builder
    `(num_classes, width, bn_init) -> model`."""

    family: str
    net: type[StagedNet]
    builder: Callable[..., StagedNet]


REGISTRY: dict[str, ModelSpec] = {
    **{
        f"preactresnet{d}": ModelSpec("preact", PreActResNet, lambda c, d=d, **o: preactresnet(d, c, **o))
        for d in (18, 34, 50, 101, 152)
    },
    "wrn28_10": ModelSpec("wrn", WideResNet, lambda c, **o: WideResNet(28, 10, c, **o)),
    "wrn28_2": ModelSpec("wrn", WideResNet, lambda c, **o: WideResNet(28, 2, c, **o)),
}

BN_INIT_NAMES = tuple(BN_INITS)


def mixing_points(name: str) -> tuple[int, ...]:
    """The mixing points of model `name` (0 = input, i = output of stage i), from its class."""
    return REGISTRY[name].net.points()


def build(
    name: str,
    num_classes: int,
    width: int | None = None,
    bn_init: str = "uniform",
    stem_stride: int = 1,
    dropout: float = 0.0,
) -> StagedNet:
    """Build model `name` for `num_classes` classes; `width` is the initial channels (the family's default if None),
    `stem_stride` the first convolution's stride, `dropout` the probability before the final linear layer."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(REGISTRY)}")
    options = {"bn_init": bn_init, "stem_stride": stem_stride, "dropout": dropout}
    if width is not None:
        options["width"] = width
    return REGISTRY[name].builder(num_classes, **options)


def build_from(model: Any, num_classes: int) -> StagedNet:
    """The model a run's `model` config (config.ModelConfig) describes."""
    return build(model.name, num_classes, model.width, model.bn_init, model.stem_stride, model.dropout)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
