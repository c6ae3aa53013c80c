"""The datasets mm_repro reads, one row each (`DatasetSpec`): its reader, its classes, its split sizes and one
image's shape. A dataset is a row here (with its reader in data/) and a conf/dataset/<name>.yaml (its settings: where
its files are, its normalisation and crop); a config file alone adds no dataset and is refused in one line
(`dataset_of`), never read with another dataset's reader. `load_splits` reads a run's splits through its row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm_repro.config import DatasetConfig
from mm_repro.data.datasets import (
    cap_per_class,
    ensure_files,
    hold_out_per_class,
    make_synthetic,
    only_classes,
    read_cifar,
    read_svhn,
)
from mm_repro.data.mnist import ensure_files as ensure_mnist
from mm_repro.data.mnist import read_mnist
from mm_repro.data.tiny_imagenet import ensure_files as ensure_tiny_imagenet
from mm_repro.data.tiny_imagenet import read_tiny_imagenet
from mm_repro.data.types import Arrays, Splits
from mm_repro.errors import UserError

Reader = Callable[[DatasetConfig, Path], tuple[Arrays, Arrays]]  # (its settings, its root) -> (train, test)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: how many classes (None: as many as asked, the generated set), its standard split sizes, one
    image's (channels, height, width), and its reader (which fetches the files first where allowed)."""

    name: str
    classes: int | None
    train: int
    test: int
    shape: tuple[int, int, int]
    read: Reader


def _cifar(name: str) -> Reader:
    def read(cfg: DatasetConfig, root: Path) -> tuple[Arrays, Arrays]:
        ensure_files(name, root, cfg.download)
        return read_cifar(name, root)

    return read


def _svhn(cfg: DatasetConfig, root: Path) -> tuple[Arrays, Arrays]:
    ensure_files("svhn", root, cfg.download)
    return read_svhn(root)


def _mnist(cfg: DatasetConfig, root: Path) -> tuple[Arrays, Arrays]:
    ensure_mnist(root, cfg.download)
    return read_mnist(root)


def _tiny_imagenet(cfg: DatasetConfig, root: Path) -> tuple[Arrays, Arrays]:
    ensure_tiny_imagenet(root, cfg.download)
    return read_tiny_imagenet(root)


def _synthetic(cfg: DatasetConfig, root: Path) -> tuple[Arrays, Arrays]:
    return make_synthetic(cfg.num_classes, cfg.train_size, cfg.test_size)


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("cifar10", 10, 50_000, 10_000, (3, 32, 32), _cifar("cifar10")),
        DatasetSpec("cifar100", 100, 50_000, 10_000, (3, 32, 32), _cifar("cifar100")),
        DatasetSpec("svhn", 10, 73_257, 26_032, (3, 32, 32), _svhn),
        DatasetSpec("tiny_imagenet", 200, 100_000, 10_000, (3, 64, 64), _tiny_imagenet),
        DatasetSpec("mnist", 10, 60_000, 10_000, (1, 28, 28), _mnist),
        DatasetSpec("synthetic", None, 2_000, 500, (3, 32, 32), _synthetic),
    )
}


def dataset_of(name: str) -> DatasetSpec:
    """The dataset named `name`, or one line: a conf/dataset file without its row here reads nothing."""
    if name not in DATASETS:
        raise UserError(
            f"dataset={name!r} has no reader in mm_repro/data/ (a config file alone adds no dataset); the datasets "
            f"are {', '.join(DATASETS)}"
        )
    return DATASETS[name]


def image_shape(dataset: Any) -> tuple[int, int, int]:
    """One image's (channels, height, width) of the configured dataset."""
    return dataset_of(dataset.name).shape


def load_splits(cfg: DatasetConfig, seed: int = 0) -> Splits:
    """Train, test and (with `dataset.valid_per_class`) validation splits of the configured dataset, on the CPU."""
    root = Path(cfg.root)
    train, test = dataset_of(cfg.name).read(cfg, root)
    for split_name, split in (("train", train), ("test", test)):
        if len(split.labels) == 0:
            raise UserError(f"dataset {cfg.name} ({split_name} split in {root.resolve()}) holds no images")
        low, high = int(split.labels.min()), int(split.labels.max())
        if low < 0 or high >= cfg.num_classes:
            bad = low if low < 0 else high
            raise UserError(
                f"dataset {cfg.name} ({split_name} split in {root.resolve()}): label {bad} found; labels must lie in "
                f"0..{cfg.num_classes - 1} (dataset.num_classes={cfg.num_classes})"
            )
    if cfg.classes is not None:  # only these labels (Figure 5's digits 0-4), in both splits
        train, test = only_classes(train, cfg.classes), only_classes(test, cfg.classes)
    valid = None
    if cfg.valid_per_class:
        train, valid = hold_out_per_class(train, cfg.valid_per_class, seed)
    if cfg.per_class_cap:
        train = cap_per_class(train, cfg.per_class_cap, seed)
    return Splits(train, test, valid)


def load_arrays(cfg: DatasetConfig, seed: int = 0) -> tuple[Arrays, Arrays]:
    """Train and test splits of the configured dataset, on the CPU (load_splits, without the validation split)."""
    splits = load_splits(cfg, seed)
    return splits.train, splits.test
