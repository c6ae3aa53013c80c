"""Typed schemas for the composed Hydra config, and the checks Hydra cannot do (values that depend on each other).

`validate_train(cfg)` merges the composed DictConfig into `TrainRunConfig`: a misspelt key or a value of the wrong
type is a `UserError` naming the key. The YAML files in conf/ stay plain (`name:` keys, no `_target_`), so run
configs written by older versions stay loadable. Each option's allowed values are written once: a config group's
options are the files in its conf/ directory (`group_options`), the others are the tuples below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mm_repro.errors import UserError
from mm_repro.method.losses import LOSSES
from mm_repro.models import BN_INIT_NAMES, REGISTRY, mixing_points
from mm_repro.training.step import PRECISION_DTYPES

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PAPER_DIR = CONF_DIR.parent / "results" / "paper"  # the paper's numbers, one JSON file per table

PAIRINGS = ("permutation", "flip")
PRECISIONS = tuple(PRECISION_DTYPES)
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
LOGGER_MODES = ("offline", "online", "disabled")  # W&B's modes (wandb.init(mode=...))
SEED_LIMIT = 2**32  # numpy's RandomState takes seeds in 0..2^32-1; a DDP rank uses seed + rank

# Keys that change where or how fast a run trains, not its numbers (beyond floating-point rounding): they stay out of
# the run directory's name (`dirname_excludes`), and a run may resume with other values for them.
# Every other key is compared with the checkpoint's before a run resumes (README "Resuming and preemption").
RESUME_FREE_KEYS = (
    "logger",
    "device",
    "deterministic",
    "dataset.root",
    "dataset.download",
    "train.resume",
    "train.eval_batch_size",
    "train.compile",
    "train.compile_mode",
    "train.compile_backend",
    "train.channels_last",
    "train.fused",
    "train.checkpoint_seconds",
    "train.checkpoint_every",
)


def compose_train(overrides: list[str]) -> DictConfig:
    """conf/train.yaml composed with `overrides`, as `python -m mm_repro train` composes it (inside another command's
    Hydra app, or outside any)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def group_options(group: str) -> tuple[str, ...]:
    """The options of a config group: the YAML files in conf/<group>/."""
    return tuple(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))


def config_groups() -> tuple[str, ...]:
    return tuple(sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"))


@dataclass
class DatasetConfig:
    name: str = "cifar10"
    root: str = "data"
    download: bool = True
    num_classes: int = 10
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    crop_padding: int = 2
    flip: bool = True
    per_class_cap: int | None = None  # official SVHN: 7325 (docs/protocol.md §4); null = every image
    train_size: int = 0  # synthetic only
    test_size: int = 0  # synthetic only


@dataclass
class ModelConfig:
    name: str = "preactresnet18"
    family: str = "preact"
    width: int = 64
    bn_init: str = "uniform"  # uniform (PyTorch <= 1.1, the official code's era) | ones (today's PyTorch)


@dataclass
class MethodConfig:
    name: str = "erm"
    alpha: float = 0.0
    layers: list[int] = field(default_factory=list)
    pairing: str = "permutation"


@dataclass
class ScheduleConfig:
    epochs: int = 2000
    milestones: list[int] = field(default_factory=list)


@dataclass
class ProtocolConfig:
    name: str = "official"
    schedules: dict[str, ScheduleConfig] = field(default_factory=dict)
    manifold_layers: dict[str, list[int]] = field(default_factory=dict)
    svhn_per_class_cap: int | None = None


@dataclass
class TrainConfig:
    epochs: int = 2000
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    batch_size: int = 100
    eval_batch_size: int = 500
    loss: str = "bce_softmax"
    resume: bool = True
    precision: str = "fp32"
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    compile_backend: str = "inductor"  # torch.compile backend; aot_eager / eager help debug a compile problem
    channels_last: bool | None = None  # null: wherever it is safe (CUDA, and the CPU unless oneDNN bug #6035 bites)
    fused: bool | None = None  # fused SGD (one kernel for the update); null: on CUDA only
    checkpoint_seconds: float = 300.0  # a checkpoint at an epoch's end once this much wall time has passed
    checkpoint_every: int | None = None  # also every N epochs, if set


@dataclass
class LoggerConfig:
    name: str = "none"
    mode: str = "offline"
    project: str = "mm_repro"
    entity: str | None = None
    group: str | None = None
    dir: str | None = None


def dirname_excludes() -> list[str]:
    """The override keys left out of a run directory's name (conf/train.yaml asks for them through the resolver
    `mm_repro.dirname_excludes`): RESUME_FREE_KEYS, every logger key, and Hydra's own paths."""
    logger = [f"logger.{f.name}" for f in fields(LoggerConfig)]
    return [*RESUME_FREE_KEYS, *logger, "hydra.run.dir", "hydra.sweep.dir"]


OmegaConf.register_new_resolver("mm_repro.dirname_excludes", dirname_excludes, replace=True)


@dataclass
class TrainRunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    experiment: str | None = None  # set from Hydra's runtime choice of the experiment group, never typed


def _one_line(exc: OmegaConfBaseException) -> str:
    """OmegaConf's messages span lines (key, type, object); keep the message and the key."""
    message = str(exc).splitlines()[0]
    key = getattr(exc, "full_key", None)
    return f"config key {key}: {message}" if key else message


def to_schema(cfg: DictConfig | dict, schema: type) -> Any:
    """Merge `cfg` into `schema` (unknown keys and wrong types are errors) and return the dataclass object."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise UserError(_one_line(exc)) from None


def choose(what: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise UserError(f"{what}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def _check_number(key: str, value: float, minimum: float, strict: bool) -> None:
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise UserError(f"{key}={value} must be a finite number {bound}")


def _check_mixing(run: TrainRunConfig) -> None:
    method = run.method
    points = mixing_points(run.model.name)
    _check_number("method.alpha", method.alpha, 0.0, strict=True)
    if not method.layers:
        raise UserError(f"method.layers is empty; method={method.name} needs mixing points from {list(points)}")
    bad = [k for k in method.layers if k not in points]
    if bad:
        raise UserError(
            f"method.layers={method.layers}: {run.model.name} has no mixing point {bad[0]}; "
            f"its mixing points are {list(points)} (0 = input, i = output of stage i)"
        )
    if method.name == "mixup" and method.layers != [0]:
        raise UserError(f"method=mixup mixes the input only (layers=[0]), got {method.layers}; use method=manifold")
    if run.train.batch_size < 2:
        raise UserError(f"train.batch_size={run.train.batch_size}: mixing needs at least 2 examples per batch")


def _check_schedule(t: TrainConfig) -> None:
    _check_number("train.lr", t.lr, 0.0, strict=True)
    _check_number("train.gamma", t.gamma, 0.0, strict=True)
    _check_number("train.momentum", t.momentum, 0.0, strict=False)
    _check_number("train.weight_decay", t.weight_decay, 0.0, strict=False)
    _check_number("train.checkpoint_seconds", t.checkpoint_seconds, 0.0, strict=False)
    if t.nesterov and t.momentum == 0:
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
    if len(d.mean) != 3 or len(d.std) != 3:
        raise UserError(f"dataset.mean={d.mean} and dataset.std={d.std} need one value per channel (3 each)")
    for i, std in enumerate(d.std):
        _check_number(f"dataset.std[{i}]", std, 0.0, strict=True)
    for i, mean in enumerate(d.mean):
        _check_number(f"dataset.mean[{i}]", mean, -math.inf, strict=False)
    if d.crop_padding < 0:
        raise UserError(f"dataset.crop_padding={d.crop_padding} must be >= 0 (0: no crop)")


def validate_train(cfg: DictConfig | dict) -> TrainRunConfig:
    """Typed, checked training config; every problem is a one-line `UserError` naming the value and what is allowed."""
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
    _check_data(run.dataset)
    if not 0 <= run.seed < SEED_LIMIT - 64:
        raise UserError(f"seed={run.seed} is out of range; a seed must lie in 0..{SEED_LIMIT - 65}")
    if run.method.name != "erm":
        _check_mixing(run)
    for key, value in (
        ("train.epochs", run.train.epochs),
        ("train.batch_size", run.train.batch_size),
        ("train.eval_batch_size", run.train.eval_batch_size),
        ("model.width", run.model.width),
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


@dataclass
class TablesConfig:
    runs: Any = "runs"  # a directory or a list of directories
    out: str = "results/tables"
    tables: Any = None  # null: every table; or a list of names (results/paper/<name>.json)
    figures: bool = True
    include_chance: bool = False  # true: runs whose final error is at chance level enter the cells too
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def as_list(value: Any) -> list:
    """A scalar or a list from the command line (`runs=a` or `runs=[a,b]`) as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
