"""`train`'s config as a typed, checked object (`validate_train`): its schema (config.train), then the checks a schema
cannot express because they need the models and methods or depend on each other (a layer the model does not have,
momentum 0 with Nesterov, a milestone that never applies), each a one-line `UserError`."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from mm_repro.config import (
    COMPILE_MODES,
    DEVICES,
    LOGGER_MODES,
    OPTIMIZERS,
    PAIRINGS,
    PRECISIONS,
    SEED_LIMIT,
    SMALLEST_ALPHA,
    DatasetConfig,
    TrainConfig,
    TrainRunConfig,
    check_number,
    choose,
    group_options,
    to_schema,
)
from mm_repro.data import dataset_of, image_shape
from mm_repro.errors import UserError
from mm_repro.method import method_of
from mm_repro.method.base import Method
from mm_repro.method.losses import LOSSES
from mm_repro.models import BN_INIT_NAMES, NAMED_FAMILIES, REGISTRY, mixing_points


def _check_points(run: TrainRunConfig, method: Method) -> None:
    """The eligible set S, by what the method mixes: none (ERM, cutout, CutMix mix no point), the input (point 0, or
    "input"), or any of the model's points (its integers, or for a model of named points its modules' names, which
    training.builders checks against the built model)."""
    layers, model = list(run.method.layers), run.model
    if not method.interpolates:
        if layers:
            raise UserError(f"method={method.name} mixes no point; method.layers={layers} must be []")
        return
    if not layers:
        raise UserError(f"method.layers is empty; method={method.name} needs mixing points")
    bad_type = [k for k in layers if isinstance(k, bool) or not isinstance(k, int | str)]
    if bad_type:
        raise UserError(f"method.layers={layers}: {bad_type[0]!r} is neither a point number nor a module's name")
    twice = sorted({str(k) for k in layers if layers.count(k) > 1})
    if twice:  # k is drawn uniformly over the list: a repeated point would be drawn more often than the others
        raise UserError(
            f"method.layers={layers} lists {twice[0]} twice; name each eligible mixing point once (S is a set)"
        )
    if method.mixes == "input" and layers not in ([0], ["input"]):
        raise UserError(
            f"method={method.name} mixes the input only (layers=[0], or [input]), got {layers}; use method=manifold"
        )
    named = REGISTRY[model.name].family in NAMED_FAMILIES
    numbers = [k for k in layers if isinstance(k, int) and k != 0]
    if named and numbers:
        raise UserError(
            f"method.layers={layers}: model={model.name} names its mixing points by module (input, layer1, ...), "
            f"not by number ({numbers[0]})"
        )
    points = mixing_points(model.name)
    bad = [k for k in layers if isinstance(k, int) and k not in points]
    if bad and not named:
        raise UserError(
            f"method.layers={layers}: {model.name} has no mixing point {bad[0]}; "
            f"its mixing points are {list(points)} (0 = input, i = output of stage i; or a module's name)"
        )


def _check_method(run: TrainRunConfig) -> None:
    """The method's settings by what it declares (method.base.Method): alpha where it draws from Beta(alpha, alpha),
    its points, the gradient-blocked ablation for hidden points only, and its own check."""
    m = run.method
    method = method_of(m.name)
    if "method.alpha" in method.reads:
        check_number("method.alpha", m.alpha, 0.0, strict=True)
        if m.alpha < SMALLEST_ALPHA:
            raise UserError(
                f"method.alpha={m.alpha} is below the smallest normal float ({SMALLEST_ALPHA:.3g}): numpy's "
                "Beta(alpha, alpha) draw returns NaN there; choose alpha >= 1e-300 (the paper's: 0.1-4)"
            )
    _check_points(run, method)
    if m.block_gradient and method.mixes != "hidden":
        raise UserError(
            f"method.block_gradient=true needs a method that mixes hidden states (method={m.name} has no hidden "
            "mixing point to block the gradient at); drop it, or choose method=manifold"
        )
    if method.check:
        method.check(m)
    if method.mixes != "no" and run.train.batch_size < 2:
        raise UserError(f"train.batch_size={run.train.batch_size}: mixing needs at least 2 examples per batch")


def _check_model(run: TrainRunConfig) -> None:
    model = run.model
    if REGISTRY[model.name].family in NAMED_FAMILIES:  # the architecture's own widths, stem and dropout
        if not model.arch:
            raise UserError(f"model={model.name} needs model.arch=NAME, the architecture (e.g. model.arch=resnet18)")
        if model.dropout:
            raise UserError(f"model.dropout={model.dropout}: model={model.name} has its architecture's own dropout")
        return
    if model.arch:
        raise UserError(f"model.arch={model.arch} is for model=torchvision or timm; model={model.name} is its own")
    if model.stem_stride < 1:
        raise UserError(
            f"model.stem_stride={model.stem_stride}: the first convolution's stride must be >= 1 (1: 32 x 32 data, "
            "2: Tiny-ImageNet as the official code)"
        )
    shape, needs = image_shape(run.dataset), REGISTRY[model.name].image_shape
    if needs and tuple(needs) != tuple(shape):
        raise UserError(
            f"model={model.name} takes {' x '.join(map(str, needs))} images (MNIST's: the paper's net of "
            f"784 inputs); dataset={run.dataset.name} has {' x '.join(map(str, shape))}: choose dataset=mnist, or a "
            "PreAct or WRN model"
        )
    side = min(shape[1:])
    if model.stem_stride > side and REGISTRY[model.name].family != "mlp":
        raise UserError(
            f"model.stem_stride={model.stem_stride} is larger than the {run.dataset.name} images ({side} x {side}): "
            "the first convolution would see one pixel; 1 for 32 x 32 data, 2 for Tiny-ImageNet (official)"
        )
    if not 0 <= model.dropout < 1 or not math.isfinite(model.dropout):
        raise UserError(f"model.dropout={model.dropout} must be a probability in [0, 1) (0: no dropout)")
    if run.dataset.valid_per_class < 0:
        raise UserError(f"dataset.valid_per_class={run.dataset.valid_per_class} must be >= 0 (0: no validation split)")


def _check_schedule(t: TrainConfig) -> None:
    """What the schema's rules cannot say (lr, gamma, momentum, weight decay and checkpoint_seconds carry theirs)."""
    if t.optimizer == "sgd" and t.nesterov and t.momentum == 0:
        raise UserError("train.nesterov=true needs train.momentum > 0 (got 0); set a momentum or train.nesterov=false")
    outside = [m for m in t.milestones if not 0 < m < t.epochs]
    if outside:
        raise UserError(
            f"train.milestones={t.milestones}: milestone {outside[0]} is outside 1..{t.epochs - 1} "
            f"(train.epochs={t.epochs}), so it would never apply; pass milestones in that range, or "
            "train.milestones=[] for a constant learning rate"
        )


def _check_data(d: DatasetConfig) -> None:
    """The values the device loader would broadcast or pad with: one mean and one positive std per channel, a
    non-negative crop padding."""
    channels = image_shape(d)[0]
    fixed = dataset_of(d.name).classes
    if fixed and d.num_classes != fixed:  # the generated dataset alone has as many classes as asked
        raise UserError(
            f"dataset.num_classes={d.num_classes}, but {d.name} has {fixed} classes: a net with another number of "
            f"outputs would not be the paper's; leave it at {fixed} (dataset.classes=[...] trains on some of them)"
        )
    if len(d.mean) != channels or len(d.std) != channels:
        raise UserError(
            f"dataset.mean={d.mean} and dataset.std={d.std} need one value per channel ({channels} each for {d.name})"
        )
    if d.classes is not None:
        outside = [c for c in d.classes if not 0 <= c < d.num_classes]
        if len(set(d.classes)) < 2 or outside or len(set(d.classes)) != len(d.classes):
            raise UserError(
                f"dataset.classes={d.classes} must list 2 or more distinct labels in 0..{d.num_classes - 1} (null: all)"
            )
    for i, std in enumerate(d.std):
        check_number(f"dataset.std[{i}]", std, 0.0, strict=True)
    for i, mean in enumerate(d.mean):
        check_number(f"dataset.mean[{i}]", mean, -math.inf, strict=False)
    if d.crop_padding < 0:
        raise UserError(f"dataset.crop_padding={d.crop_padding} must be >= 0 (0: no crop)")


def validate_train(cfg: DictConfig | dict) -> TrainRunConfig:
    """`train`'s typed, checked config; every problem is a one-line `UserError` naming the value and what is
    allowed."""
    run: TrainRunConfig = to_schema(cfg, TrainRunConfig)
    choose("dataset", run.dataset.name, group_options("dataset"))
    choose("model", run.model.name, tuple(REGISTRY))
    choose("method", run.method.name, group_options("method"))
    choose("model.bn_init", run.model.bn_init, BN_INIT_NAMES)
    choose("train.loss", run.train.loss, tuple(LOSSES))
    choose("train.precision", run.train.precision, PRECISIONS)
    choose("method.pairing", run.method.pairing, PAIRINGS)
    choose("device", run.device, DEVICES)
    choose("train.compile_mode", run.train.compile_mode, COMPILE_MODES)
    choose("logger.mode", run.logger.mode, LOGGER_MODES)
    choose("train.optimizer", run.train.optimizer, OPTIMIZERS)
    _check_data(run.dataset)
    if not 0 <= run.seed < SEED_LIMIT - 64:
        raise UserError(f"seed={run.seed} is out of range; a seed must lie in 0..{SEED_LIMIT - 65}")
    _check_method(run)
    _check_model(run)
    for key, value in (
        ("train.epochs", run.train.epochs),
        ("train.batch_size", run.train.batch_size),
        ("train.eval_batch_size", run.train.eval_batch_size),
        *((("model.width", run.model.width),) if REGISTRY[run.model.name].family not in NAMED_FAMILIES else ()),
        ("train.checkpoint_every", 1 if run.train.checkpoint_every is None else run.train.checkpoint_every),
        ("dataset.per_class_cap", 1 if run.dataset.per_class_cap is None else run.dataset.per_class_cap),
        *(
            (f"dataset.{k}", getattr(run.dataset, k))
            for k in ("train_size", "test_size")
            if run.dataset.name == "synthetic"
        ),
    ):
        if value < 1:
            raise UserError(f"{key}={value} must be >= 1")
    _check_schedule(run.train)
    return run
