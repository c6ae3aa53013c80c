"""`train`'s config: where conf/ is, how it is composed (`compose_train`), its groups and their options, its typed
schema (`TrainRunConfig`), and which keys a run's setup, its directory's name and a resume compare.

The YAML files in conf/ stay plain (`name:` keys, no `_target_`), so run configs written by older versions stay
loadable. Each option's allowed values are written once: a config group's options are the files in its conf/
directory (`group_options`), the others are the tuples below. The checks that need the models and methods (a layer
the model does not have, say) are training.checks's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mm_repro.config.schema import rule

_PACKAGE = Path(__file__).resolve().parent.parent  # mm_repro/
_INSTALLED = (_PACKAGE / "conf").is_dir()  # a wheel's install carries conf/ and results/paper/ inside the package
CONF_DIR = _PACKAGE / "conf" if _INSTALLED else _PACKAGE.parent / "conf"
PAPER_DIR = _PACKAGE / "paper" if _INSTALLED else _PACKAGE.parent / "results" / "paper"  # one JSON file per table


def paper_numbers(name: str) -> dict:
    """The paper's numbers for one of the CPU experiments (results/paper/cpu/<name>.json: flattening, table8), read
    as `tables` reads the GPU tables' (results/paper/*.json)."""
    return json.loads((PAPER_DIR / "cpu" / f"{name}.json").read_text())


OPTIMIZERS = ("sgd", "adam")  # sgd: the official SGD (momentum, Nesterov); adam: the MNIST nets'
PAIRINGS = ("permutation", "flip")
PRECISIONS = ("fp32", "bf16", "fp16")  # training.step.PRECISION_DTYPES maps them to dtypes
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
LOGGER_MODES = ("offline", "online", "disabled")  # W&B's modes (wandb.init(mode=...))
# The smallest alpha a Beta(alpha, alpha) draw takes: below the smallest normal double numpy's draw returns NaN.
SMALLEST_ALPHA = 2.2250738585072014e-308  # sys.float_info.min
SEED_LIMIT = 2**32  # numpy's RandomState takes seeds in 0..2^32-1; a DDP rank uses seed + rank

# Keys that change where or how fast a run trains, not its numbers (beyond floating-point rounding): they stay out of
# the run directory's name (`dirname_excludes`), and a run may resume with other values for them.
# Every other key is compared with the checkpoint's before a run resumes (docs/trust.md).
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
DERIVED_KEYS = (
    "protocol.schedules",
    "protocol.manifold_layers",
    "protocol.svhn_per_class_cap",
    "protocol.datasets",
    "model.manifold_layers",  # reaches a run through method.layers
)

# Keys added to the config after runs were recorded without them, each with the value that means "as before": a run
# whose config lacks one resumes, and groups in `tables`, as if it held that value (records.result.setup_of,
# records.checkpoint.config_changes).
ADDED_KEYS = {
    "dataset.valid_per_class": 0,
    "dataset.stem_stride": 1,
    "model.stem_stride": 1,
    "model.dropout": 0.0,
    "method.block_gradient": False,
    "dataset.classes": None,
    "train.optimizer": "sgd",
    "method.cutmix_prob": 0.5,
    "model.arch": None,
}


def quoted(value: str) -> str:
    """`value` as one quoted string of Hydra's override grammar (a path holding `=`, a comma, spaces or quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


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
    classes: list[int] | None = None  # only these labels, in train and test (Figure 5's digits 0-4); null: all


@dataclass
class ModelConfig:
    name: str = "preactresnet18"
    family: str = "preact"
    width: int = 64
    bn_init: str = "uniform"  # uniform (PyTorch <= 1.1, the official code's era) | ones (today's PyTorch)
    stem_stride: int = 1  # the first convolution's stride; conf/model takes it from the dataset (Tiny-ImageNet: 2)
    dropout: float = 0.0  # PreAct/WRN: before the final linear layer; MLP: after each hidden layer but the bottleneck
    manifold_layers: list[Any] = field(default_factory=list)  # the eligible set S manifold mixup takes by default
    arch: str | None = None  # model=torchvision (or timm): the architecture, e.g. resnet18


@dataclass
class MethodConfig:
    name: str = "erm"
    alpha: float = 0.0
    layers: list[Any] = field(default_factory=list)  # mixing points: integers (a staged model's), or module names
    pairing: str = "permutation"
    block_gradient: bool = False  # manifold mixup: no gradient from the mixed loss into the layers before k
    cutout: int = 16  # method=cutout: the side of the square hole (official --cutout)
    cutmix_prob: float = 0.5  # method=cutmix: the probability that a batch is cut and mixed (official CIFAR: 0.5)


@dataclass
class ProtocolConfig:
    name: str = "official"
    # per model family: epochs, milestones and, where the family trains otherwise than the official SGD, its optimizer,
    # lr and weight_decay (the MNIST nets: Adam); read through train.yaml's interpolations, so left untyped here
    schedules: dict[str, Any] = field(default_factory=dict)
    manifold_layers: dict[str, list[int]] = field(default_factory=dict)
    svhn_per_class_cap: int | None = None
    datasets: dict[str, Any] = field(default_factory=dict)  # a dataset's own schedule and alpha (Tiny-ImageNet)


@dataclass
class TrainConfig:
    epochs: int = 2000
    milestones: list[int] = field(default_factory=list)
    gamma: float = rule(0.1, gt=0)
    optimizer: str = "sgd"  # sgd (official) | adam (the MNIST nets of the small experiments; conf/protocol)
    lr: float = rule(0.1, gt=0)
    momentum: float = rule(0.9, ge=0)
    nesterov: bool = True
    weight_decay: float = rule(1e-4, ge=0)
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
    checkpoint_seconds: float = rule(300.0, ge=0)  # a checkpoint at an epoch's end once this much wall time has passed
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
