"""Typed schemas for the composed Hydra config, and the checks Hydra cannot do (values that depend on each other).

`validate_train(cfg)` merges the composed DictConfig into `TrainRunConfig`: a misspelt key or a value of the wrong
type is a `UserError` naming the key. The YAML files in conf/ stay plain (`name:` keys, no `_target_`), so run
configs written by older versions stay loadable. Each option's allowed values are written once: a config group's
options are the files in its conf/ directory (`group_options`), the others are the tuples below.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mm_repro.errors import UserError
from mm_repro.training.step import PRECISION_DTYPES

_PACKAGE = Path(__file__).resolve().parent
_INSTALLED = (_PACKAGE / "conf").is_dir()  # a wheel's install carries conf/ and results/paper/ inside the package
CONF_DIR = _PACKAGE / "conf" if _INSTALLED else _PACKAGE.parent / "conf"
PAPER_DIR = _PACKAGE / "paper" if _INSTALLED else _PACKAGE.parent / "results" / "paper"  # one JSON file per table

PAIRINGS = ("permutation", "flip")
NOT_MIXING = ("erm", "cutout")  # methods with one-hot targets and no mixing point
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

# The protocol's tables (conf/protocol): their values reach a run only through the keys that interpolate them
# (train.epochs, train.milestones, method.layers, method.alpha, dataset.per_class_cap), which are compared and grouped
# on; the tables themselves are not part of a run's setup, so that a table gaining an entry (a dataset's own schedule)
# leaves every recorded run resumable and grouped as before. protocol.name stays part of it.
DERIVED_KEYS = ("protocol.schedules", "protocol.manifold_layers", "protocol.svhn_per_class_cap", "protocol.datasets")

# Keys added to the config after runs were recorded without them, each with the value that means "as before": a run
# whose config lacks one resumes, and groups in `tables`, as if it held that value (records.result.setup_of,
# records.checkpoint.config_changes).
ADDED_KEYS = {
    "dataset.valid_per_class": 0,
    "dataset.stem_stride": 1,
    "model.stem_stride": 1,
    "model.dropout": 0.0,
    "method.block_gradient": False,
}


FLOAT32_MAX = 3.4028234663852886e38  # torch computes in float32: a larger value becomes inf there
INT64_MAX = 2**63 - 1


def rule(
    default: Any = MISSING,
    *,
    factory: Any = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple | None = None,
    nonempty: bool = False,
) -> Any:
    """A schema field with the values it allows (bounds on a number or on each number of a list, a set of choices, a
    list that must not be empty): `to_schema` checks them for every command, so a value torch would reject later is
    one line naming the key before anything runs."""
    limits = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "nonempty": nonempty}
    if factory is not None:
        return field(default_factory=factory, metadata=limits)
    return field(default=default, metadata=limits)


def _number_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, float) and abs(value) > FLOAT32_MAX:
        return f"is out of float32's range (|x| <= {FLOAT32_MAX:.3g}): torch would compute with inf"
    if isinstance(value, int) and abs(value) > INT64_MAX:
        return "is out of int64's range"
    return None


def _bound_problem(value: Any, limits: dict) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    for name, text, fails in (
        ("ge", ">=", lambda v, b: v < b),
        ("gt", ">", lambda v, b: v <= b),
        ("le", "<=", lambda v, b: v > b),
        ("lt", "<", lambda v, b: v >= b),
    ):
        bound = limits.get(name)
        if bound is not None and fails(value, bound):
            return f"must be {text} {bound:g}"
    return None


def check_values(obj: Any, prefix: str = "") -> None:
    """Every value of a schema object against its field's rule and the ranges torch can compute with; the first
    problem is a one-line UserError naming the key, its value and what is allowed."""
    for f in fields(obj):
        value, key, limits = getattr(obj, f.name), f"{prefix}{f.name}", dict(f.metadata)
        if hasattr(type(value), "__dataclass_fields__"):
            check_values(value, f"{key}.")
            continue
        items = value if isinstance(value, list | tuple) else [value]
        if limits.get("nonempty") and isinstance(value, list | tuple) and not value:
            raise UserError(f"{key}=[] must list at least one value")
        if limits.get("choices") and value is not None:
            for item in items:
                if item not in limits["choices"]:
                    raise UserError(
                        f"{key}={item!r} is not allowed; choose one of {', '.join(map(str, limits['choices']))}"
                    )
        for item in items:
            problem = _number_problem(item) or _bound_problem(item, limits)
            if problem:
                each = " (each value)" if isinstance(value, list | tuple) else ""
                raise UserError(f"{key}={value!r}{each} {problem}")


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
    num_classes: int = rule(10, ge=2)
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    crop_padding: int = 2
    flip: bool = True
    per_class_cap: int | None = None  # official SVHN: 7325 (docs/protocol.md §4); null = every image
    valid_per_class: int = 0  # images per class held out of training as a validation split (0: none, as official)
    stem_stride: int = 1  # what model.stem_stride defaults to for this dataset
    train_size: int = 0  # synthetic only
    test_size: int = 0  # synthetic only


@dataclass
class ModelConfig:
    name: str = "preactresnet18"
    family: str = "preact"
    width: int = 64
    bn_init: str = "uniform"  # uniform (PyTorch <= 1.1, the official code's era) | ones (today's PyTorch)
    stem_stride: int = 1  # the first convolution's stride; conf/model takes it from the dataset (Tiny-ImageNet: 2)
    dropout: float = 0.0  # dropout probability before the final linear layer (our choice; official: none)


@dataclass
class MethodConfig:
    name: str = "erm"
    alpha: float = 0.0
    layers: list[int] = field(default_factory=list)
    pairing: str = "permutation"
    block_gradient: bool = False  # manifold mixup: no gradient from the mixed loss into the layers before k
    cutout: int = 16  # method=cutout: the side of the square hole (official --cutout)


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
    datasets: dict[str, Any] = field(default_factory=dict)  # a dataset's own schedule and alpha (Tiny-ImageNet)


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


# How a wrong-typed value's line names what the key takes, by the schema's annotation.
EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "int | None": "an integer, or null",
    "float | None": "a number, or null",
    "bool | None": "true, false or null",
    "str | None": "a string, or null",
    "list[int]": "a list of integers, e.g. [0,1,2]",
    "list[float]": "a list of numbers, e.g. [0.5,0.5,0.5]",
    "list[str]": "a list of names, e.g. [a,b]",
}


def _expected(schema: type, key: str) -> str | None:
    """What the schema's field at dotted `key` takes, in words (None if the key is not a typed field)."""
    node: Any = schema
    for part in key.split("."):
        hints = (
            {f.name: f for f in fields(node)}
            if isinstance(node, type) and hasattr(node, "__dataclass_fields__")
            else {}
        )
        if part not in hints:
            return None
        f = hints[part]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        node = type(default) if hasattr(type(default), "__dataclass_fields__") else f.type
    return EXPECTED.get(str(node))


def _one_line(exc: OmegaConfBaseException, schema: type) -> str:
    """OmegaConf's messages span lines (key, type, object); keep the message and the key, and for a value of the
    wrong type name the type the key takes (`method.layers=0` -> a list of integers)."""
    message = str(exc).splitlines()[0]
    key = getattr(exc, "full_key", None)
    expected = _expected(schema, key) if key else None
    if expected and hasattr(exc, "value"):
        value = exc.value
        return f"{key}={value!r} is of the wrong type: {key} takes {expected}"
    return f"config key {key}: {message}" if key else message


def to_schema(cfg: DictConfig | dict, schema: type) -> Any:
    """Merge `cfg` into `schema` (unknown keys and wrong types are errors), check every value against its field's
    rule (`rule`) and the float32/int64 range, and return the dataclass object."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise UserError(_one_line(exc, schema)) from None
    check_values(obj)
    return obj


def choose(what: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise UserError(f"{what}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def check_number(key: str, value: float, minimum: float, strict: bool) -> None:
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise UserError(f"{key}={value} must be a finite number {bound}")


def validate_train(cfg: DictConfig | dict) -> TrainRunConfig:
    """Typed, checked training config; every problem is a one-line `UserError` naming the value and what is allowed
    (the checks: mm_repro.training.checks)."""
    from mm_repro.training.checks import checked_train

    return checked_train(cfg)


@dataclass
class TablesConfig:
    runs: Any = "runs"  # a directory or a list of directories
    out: str = "results/tables"
    tables: Any = None  # null: every table; or a list of names (results/paper/<name>.json)
    figures: bool = True
    include_chance: bool = False  # true: runs whose final error is at chance level enter the cells too
    report: Any = None  # null: final and best (and best_valid where runs have it); or a list of those
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def as_list(value: Any) -> list:
    """A scalar or a list from the command line (`runs=a` or `runs=[a,b]`) as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
