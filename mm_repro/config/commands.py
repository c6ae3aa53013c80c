"""The schemas of the commands besides `train` (conf/<command>.yaml is merged into them): every key each takes, with
the values it allows (`rule`). `python -m mm_repro <command> --help` lists them with the comments of
conf/<command>.yaml, and a misspelt key is answered with the nearest of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mm_repro.config.schema import rule
from mm_repro.config.train import (
    COMPILE_MODES,
    DEVICES,
    PRECISIONS,
    SEED_LIMIT,
    SMALLEST_ALPHA,
    DatasetConfig,
    LoggerConfig,
    MethodConfig,
    ModelConfig,
)

EVALUATIONS = ("fgsm", "pgd", "knn", "deformations", "calibration", "flattening")  # evaluation.evaluate.EVALUATIONS
FLATTENING_STUDIES = ("section3_2", "figure5", "appendix_g")  # experiments.flattening.nets_of
APPENDIX_G_FIGURES = ("figure9", "figure10", "figure11")  # its setups, by the figure that shows each
SYNTHETIC_TASKS = ("A", "B", "C")  # App. A's tasks: experiments.synthetic.TASKS
SYNTHETIC_METHODS = ("none", "input", "factor")  # Table 8's rows: experiments.synthetic.METHODS
STUDY_LAUNCHERS = ("local", "slurm", "basic")  # sweeps.study.LAUNCHERS


@dataclass
class TablesConfig:
    runs: Any = "runs"  # a directory or a list of directories
    out: str = "runs/tables"
    tables: Any = None  # null: every table; or a list of names (results/paper/<name>.json)
    figures: bool = True
    include_chance: bool = False  # true: runs whose final error is at chance level enter the cells too
    report: Any = None  # null: final and best (and best_valid where runs have it); or a list of those
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class EvalConfig:
    run: str | None = None
    suite: list[str] = rule(
        factory=lambda: ["fgsm", "deformations", "calibration", "flattening"], choices=EVALUATIONS, nonempty=True
    )
    checkpoint: str = rule("last", choices=("last", "best"))  # last: eval.json | best: eval_best.json
    device: str = rule("auto", choices=DEVICES)
    batch_size: int = rule(500, ge=1)
    dataset_root: str | None = None  # where the run's dataset is, if not where training found it
    fgsm_eps_normalized: list[float] = rule(factory=lambda: [0.03], gt=0)
    fgsm_eps_pixel: list[float] = rule(factory=lambda: [8 / 255], gt=0, le=1)
    deformation_seed: int = rule(0, ge=0, lt=SEED_LIMIT)
    ece_bins: int = rule(15, ge=1, le=10_000)  # more bins than test images says nothing
    flattening_max_per_class: int = rule(500, ge=2)
    knn_k: list[int] = rule(factory=lambda: [5, 1, 20], ge=1, nonempty=True)  # the first is the one `tables` compares
    pgd_steps_normalized: int = rule(200, ge=1)  # App. D: 200 unbounded steps of 0.01 in the official normalised space
    pgd_step_normalized: float = rule(0.01, gt=0)
    pgd_eps_pixel: float = rule(8 / 255, gt=0, le=1)  # a bounded multi-step attack (Madry et al.'s CIFAR setting):
    pgd_step_pixel: float = rule(2 / 255, gt=0, le=1)  # eps 8/255, steps of 2/255, 20 of them, pixels clipped to [0, 1]
    pgd_steps_pixel: int = rule(20, ge=1)


@dataclass
class SpiralConfig:
    out: str = "runs/spiral"
    points: int = rule(1000, ge=2)  # per class
    steps: int = rule(3000, ge=1)
    alpha: float = rule(2.0, ge=SMALLEST_ALPHA)  # lam ~ Beta(alpha, alpha); numpy gives NaN below a normal float
    lr: float = rule(3e-3, gt=0)
    width: int = rule(64, ge=3)  # the nets narrow to a 2-D bottleneck
    noise: float = rule(0.03, ge=0)
    grid: int = rule(150, ge=2)
    seeds: list[int] = rule(factory=lambda: [0], ge=0, lt=SEED_LIMIT, nonempty=True, distinct=True)
    regularizers: bool = False  # true: Figure 2, the other regularizers beside Figure 1's two nets
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class Launched:
    """How a study's runs are launched (mm_repro.sweeps.study): Hydra's launcher, the runs at a time (null: one per
    core) and the launcher's own options (hydra.launcher.<key>, e.g. {partition: cpu} for SLURM)."""

    launcher: str = rule("local", choices=STUDY_LAUNCHERS)
    workers: int | None = rule(None, ge=1)
    launcher_options: dict[str, Any] | None = None


@dataclass
class StudyConfig(Launched):
    study: str = rule("section3_2", choices=FLATTENING_STUDIES)
    out: str = "runs/flattening"
    dataset_root: str = "data"
    download: bool = True
    epochs: int = rule(10, ge=1)
    batch_size: int = rule(100, ge=2)
    lr: float = rule(1e-4, gt=0)
    alpha: float = rule(2.0, ge=SMALLEST_ALPHA)  # lam ~ Beta(alpha, alpha); numpy gives NaN below a normal float
    weight_decay: float = rule(1e-4, ge=0)
    dropout: float = rule(0.5, ge=0, lt=1)
    svd_per_class: int = rule(1000, ge=2)  # test images per class whose hidden states are decomposed
    width: int = rule(1024, ge=2)  # the width of the 1024-unit layers (the paper's); tests use narrow nets
    optimizer: str = rule("adam", choices=("adam", "sgd"))  # UNCONFIRMED; sgd: the official SGD at `lr`
    svd_split: str = rule("test", choices=("test", "train"))  # whose hidden states are decomposed (UNCONFIRMED)
    # appendix_g only: the figures whose nets are trained (all three by default; Figure 12 reads Figure 9's nets)
    figures: list[str] = rule(factory=lambda: list(APPENDIX_G_FIGURES), choices=APPENDIX_G_FIGURES, nonempty=True)
    seeds: list[int] = rule(factory=lambda: [0], ge=0, lt=SEED_LIMIT - 64, nonempty=True, distinct=True)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class SyntheticConfig(Launched):
    task: str = rule("C", choices=SYNTHETIC_TASKS)
    out: str = "runs/synthetic"
    steps: int = rule(1000, ge=1)
    lr: float = rule(1e-4, gt=0)
    test_batches: int = rule(20, ge=1)
    seeds: list[int] = rule(factory=lambda: [0], ge=0, lt=SEED_LIMIT, nonempty=True, distinct=True)
    device: str = rule("auto", choices=DEVICES)  # auto (CUDA when there is one) | cpu | cuda
    classifier: str | None = rule(None, choices=SYNTHETIC_METHODS)  # one job of the task's sweep: that method's
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class VerdictsConfig:
    root: str = "."  # the repository whose results/, README.md and docs/ are judged and written


@dataclass
class BenchConfig:
    device: str = rule("cpu", choices=("cpu", "cuda"))
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    protocol: dict = field(default_factory=dict)
    out: str = "runs/bench"
    batch_size: int = rule(100, ge=2)
    precision: str = rule("fp32", choices=PRECISIONS)
    compile: bool = False
    compile_mode: str = rule("default", choices=COMPILE_MODES)
    images: int = rule(5000, ge=2)
    eval_images: int = rule(1000, ge=1)
    warmup: int = rule(3, ge=0)
    steps: int = rule(10, ge=1)
    repeats: int = rule(3, ge=1)
    workers: int = rule(2, ge=0)
    pack: int = rule(3, ge=0)  # runs in the packed row; 0 or 1: no packed row
    checkpoint_seconds: float = rule(300.0, ge=0)
    seed: int = rule(0, ge=0, lt=SEED_LIMIT - 64)
