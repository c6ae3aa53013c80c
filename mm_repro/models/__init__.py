"""Model registry: the names users type (`model=...`), each with its family (which picks the protocol's schedule,
conf/protocol), its mixing points and its builder; `build` and `build_from` make one for a dataset's image shape
(PreAct and WRN take the image's channels; the fully-connected nets its pixels).

`model=torchvision model.arch=NAME` is any classification model of torchvision (`torchvision.models.list_models`),
built as it comes (no pretrained weights: nothing is downloaded) for the run's classes; `model=timm model.arch=NAME`
any timm model, when timm is installed. Their mixing points are module names ("input", "layer1": method.points), and
their first convolution takes the data's channels (MNIST's one: torchvision's 3-channel stem is rebuilt with the same
shape otherwise; timm's `in_chans`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from mm_repro.errors import UserError
from mm_repro.models.mlp import MLP
from mm_repro.models.preact_resnet import PreActResNet, preactresnet
from mm_repro.models.staged import BN_INITS
from mm_repro.models.wide_resnet import WideResNet


@dataclass(frozen=True)
class ModelSpec:
    """A model name's family, its mixing points (0 = input, i = the output of stage or hidden layer i) and its builder
    `(num_classes, image_shape, width, options) -> model`."""

    family: str
    points: tuple[int, ...]
    builder: Callable[..., nn.Module]
    default_width: int
    image_shape: tuple[int, ...] | None = None  # the images it is defined for (the MNIST nets); None: any


def _staged(make: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    return lambda c, shape, width, o: make(c, width=width, in_channels=shape[0], **o)


def _mlp(widths: list[int], bottleneck: int | None) -> Callable[..., nn.Module]:
    """A fully-connected net of the small experiments: the 1024-unit layers take model.width, a bottleneck keeps its
    size; dropout after each hidden layer but the bottleneck (models.mlp)."""

    def make(c: int, shape: tuple[int, ...], width: int, o: dict) -> nn.Module:
        sized = [width if w == 1024 else w for w in widths]
        return MLP(math.prod(shape), sized, c, bottleneck, dropout=o["dropout"])

    return make


def _first_conv_takes(model: nn.Module, channels: int) -> nn.Module:
    """`model` with its first convolution taking `channels` input channels (a new one of the same shape otherwise)."""
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            if conv.in_channels != channels:
                new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                conv.dilation, 1, conv.bias is not None, conv.padding_mode)  # fmt: skip
                parent, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, leaf, new)
            break
    return model


def _torchvision(c: int, shape: tuple[int, ...], width: int, o: dict) -> nn.Module:
    from torchvision import models

    arch = o["arch"]
    if arch not in models.list_models(module=models):
        near = [m for m in models.list_models(module=models) if m.startswith(str(arch)[:3])][:6]
        raise UserError(f"model.arch={arch!r} is not a torchvision classification model (e.g. {', '.join(near)})")
    return _first_conv_takes(models.get_model(arch, weights=None, num_classes=c), shape[0])


def _timm(c: int, shape: tuple[int, ...], width: int, o: dict) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserError("model=timm needs timm, which is not installed: pip install timm") from None
    if o["arch"] not in timm.list_models():
        raise UserError(f"model.arch={o['arch']!r} is not a timm model (timm.list_models() lists them)")
    return timm.create_model(o["arch"], pretrained=False, num_classes=c, in_chans=shape[0])


NAMED_FAMILIES = ("torchvision", "timm")  # models whose mixing points are module names (method.points)
H = 1024
MLP_NETS = {  # name: (hidden widths, the linear bottleneck layer); conf/model/<name>.yaml says which figure each is
    "mlp_section3_2": ([H, H, H], None),
    "mlp_figure5": ([H, H, 2, H, H], 3),
    "mlp_appendix_g12": ([H, H, H, 12, H, H, H, H], 4),
    "mlp_appendix_g30": ([H, H, H, 30, H, H, H, H], 4),
    "mlp_appendix_g30_early": ([H, 30, H, H, H, H], 2),
}

REGISTRY: dict[str, ModelSpec] = {
    **{
        f"preactresnet{d}": ModelSpec(
            "preact", PreActResNet.points(), _staged(lambda c, d=d, **o: preactresnet(d, c, **o)), 64
        )
        for d in (18, 34, 50, 101, 152)
    },
    "wrn28_10": ModelSpec("wrn", WideResNet.points(), _staged(lambda c, **o: WideResNet(28, 10, c, **o)), 16),
    "wrn28_2": ModelSpec("wrn", WideResNet.points(), _staged(lambda c, **o: WideResNet(28, 2, c, **o)), 16),
    **{
        name: ModelSpec("mlp", tuple(range(len(widths) + 1)), _mlp(widths, bottleneck), H, (1, 28, 28))
        for name, (widths, bottleneck) in MLP_NETS.items()
    },
    "torchvision": ModelSpec("torchvision", (), _torchvision, 0),
    "timm": ModelSpec("timm", (), _timm, 0),
}

BN_INIT_NAMES = tuple(BN_INITS)


def mixing_points(name: str) -> tuple[int, ...]:
    """The mixing points of model `name` (0 = input, i = output of stage or hidden layer i)."""
    return REGISTRY[name].points


def build(
    name: str,
    num_classes: int,
    width: int | None = None,
    bn_init: str = "uniform",
    stem_stride: int = 1,
    dropout: float = 0.0,
    image_shape: tuple[int, ...] = (3, 32, 32),
    arch: str | None = None,
) -> nn.Module:
    """Build model `name` for `num_classes` classes and images of `image_shape` (channels, height, width); `width`
    is the initial channels of PreAct/WRN or the hidden width of a fully-connected net (the family's default if
    None), `stem_stride` the first convolution's stride, `dropout` see ModelConfig, `arch` the architecture of
    `name="torchvision"` or `"timm"`."""
    if name not in REGISTRY:
        raise UserError(f"model={name!r} is not a model; choose one of {', '.join(REGISTRY)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes={num_classes!r} must be an integer >= 2 (the classes the model tells apart)")
    if len(image_shape) != 3 or any(not isinstance(n, int) or n < 1 for n in image_shape):
        raise UserError(f"image_shape={tuple(image_shape)} must be (channels, height, width), each >= 1")
    if REGISTRY[name].family in NAMED_FAMILIES:  # the architecture's own widths: `width` is not theirs
        if not arch:
            raise UserError(f"model={name} needs model.arch=NAME, the architecture (e.g. resnet18)")
        return REGISTRY[name].builder(num_classes, tuple(image_shape), 0, {"arch": arch})
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise UserError(f"width={width!r} must be an integer >= 1, or None for the model's default")
    spec = REGISTRY[name]
    options: dict[str, Any] = {"dropout": dropout}
    if spec.family != "mlp":
        options.update(bn_init=bn_init, stem_stride=stem_stride)
    return spec.builder(num_classes, tuple(image_shape), width or spec.default_width, options)


def build_from(model: Any, num_classes: int, image_shape: tuple[int, ...]) -> nn.Module:
    """The model a run's `model` config (config.ModelConfig) describes, for images of `image_shape`."""
    return build(
        model.name,
        num_classes,
        model.width,
        model.bn_init,
        model.stem_stride,
        model.dropout,
        tuple(image_shape),
        getattr(model, "arch", None),
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
