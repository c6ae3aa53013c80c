"""Typed schemas for the composed Hydra config, and the checks Hydra cannot do (values that depend on each other).

`validate_train(cfg)` merges the composed DictConfig into `TrainRunConfig`: a misspelt key or a value of the wrong
type is a `UserError` naming the key. The YAML files in conf/ stay plain (`name:` keys, no `_target_`), so run
configs written by older versions stay loadable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mm_repro.errors import UserError
from mm_repro.models import MIXING_POINTS, REGISTRY

DATASETS = ("cifar10", "cifar100", "svhn", "synthetic")
METHODS = ("erm", "mixup", "manifold")
LOSSES = ("bce_softmax", "soft_ce")
PAIRINGS = ("permutation", "flip")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


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
    per_class_cap: int | None = None  # official SVHN: 7325 (paper.md 6.6); null = every image
    train_size: int = 0  # synthetic only
    test_size: int = 0  # synthetic only


@dataclass
class ModelConfig:
    name: str = "preactresnet18"
    family: str = "preact"
    width: int = 64


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
    channels_last: bool | None = None  # null: on CUDA only
    fused: bool | None = None  # fused SGD (one kernel for the update); null: on CUDA only
    checkpoint_every: int = 1


@dataclass
class LoggerConfig:
    name: str = "none"
    mode: str = "offline"
    project: str = "mm_repro"
    entity: str | None = None
    group: str | None = None
    dir: str | None = None


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
    experiment: str | None = None


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


def validate_train(cfg: DictConfig | dict) -> TrainRunConfig:
    """Typed, checked training config; every problem is a one-line `UserError` naming the value and what is allowed."""
    run: TrainRunConfig = to_schema(cfg, TrainRunConfig)
    choose("dataset", run.dataset.name, DATASETS)
    choose("model", run.model.name, tuple(REGISTRY))
    choose("method", run.method.name, METHODS)
    choose("train.loss", run.train.loss, LOSSES)
    choose("train.precision", run.train.precision, PRECISIONS)
    choose("method.pairing", run.method.pairing, PAIRINGS)
    choose("device", run.device, DEVICES)
    choose("train.compile_mode", run.train.compile_mode, COMPILE_MODES)
    family = REGISTRY[run.model.name][0]
    points = MIXING_POINTS[family]
    if run.method.name != "erm":
        if not run.method.alpha > 0:
            raise UserError(f"method.alpha={run.method.alpha} must be > 0 for method={run.method.name}")
        if not run.method.layers:
            raise UserError(f"method.layers is empty; method={run.method.name} needs mixing points from {list(points)}")
        bad = [k for k in run.method.layers if k not in points]
        if bad:
            raise UserError(
                f"method.layers={run.method.layers}: {run.model.name} has no mixing point {bad[0]}; "
                f"its mixing points are {list(points)} (0 = input, i = output of stage i)"
            )
        if run.method.name == "mixup" and run.method.layers != [0]:
            raise UserError(
                f"method=mixup mixes the input only (layers=[0]), got {run.method.layers}; use method=manifold"
            )
        if run.train.batch_size < 2:
            raise UserError(f"train.batch_size={run.train.batch_size}: mixing needs at least 2 examples per batch")
    for key in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every", "width"):
        section = run.model if key == "width" else run.train
        if getattr(section, key) < 1:
            raise UserError(f"{key}={getattr(section, key)} must be >= 1")
    if run.train.lr <= 0:
        raise UserError(f"train.lr={run.train.lr} must be > 0")
    return run


@dataclass
class TablesConfig:
    runs: Any = "runs"  # a directory or a list of directories
    out: str = "results/tables"
    tables: Any = None  # null: every table; or a list of names (results/paper/<name>.json)
    figures: bool = True
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def as_list(value: Any) -> list:
    """A scalar or a list from the command line (`runs=a` or `runs=[a,b]`) as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
