"""Fixtures: tiny datasets written in the real on-disk formats (CIFAR python pickles, SVHN .mat), and helpers
to compose configs with Hydra's compose API and to run the CLI as a user does (subprocess)."""

from __future__ import annotations

import os

# As `python -m mm_repro` does (mm_repro/__main__.py), before torch loads: in-process tests on a busy machine would
# otherwise spin OpenMP threads against the other work (docs/using.md, "Threads on a CPU"). It changes no number.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np
import pytest
import scipy.io
from hydra import compose, initialize_config_dir

from mm_repro.config import CONF_DIR

REPO = Path(__file__).resolve().parent.parent


def _images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Class-dependent images (a per-class colour plus noise), so a tiny net can learn something."""
    base = (np.arange(10)[:, None] * np.array([25, 60, 95]) % 256)[labels % 10]  # (N, 3)
    noise = rng.integers(-40, 40, size=(len(labels), 3, 32, 32))
    return np.clip(base[:, :, None, None] + noise, 0, 255).astype(np.uint8)


def write_cifar(root: Path, name: str, per_file: int = 40, seed: int = 0) -> Path:
    """CIFAR-10 (5 train batches + test batch) or CIFAR-100 (train + test) in the python-pickle format."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, files, key, classes = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "labels",
            10,
        )
        files.append("test_batch")
    else:
        folder, files, key, classes = root / "cifar-100-python", ["train", "test"], "fine_labels", 100
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        labels = rng.integers(0, classes, size=per_file)
        entry = {"data": _images(rng, labels).reshape(per_file, -1), key: labels.tolist(), "filenames": []}
        if name == "cifar100":
            entry["coarse_labels"] = (labels // 5).tolist()
        with open(folder / f, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
    return root


def write_svhn(root: Path, n_train: int = 120, n_test: int = 60, seed: int = 0) -> Path:
    """SVHN train/test .mat files: X is (32, 32, 3, N) uint8, y is (N, 1) with the digit 0 stored as 10."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        labels = rng.integers(1, 11, size=n)
        images = _images(rng, labels).transpose(2, 3, 1, 0)  # NCHW -> HWCN
        scipy.io.savemat(root / name, {"X": images, "y": labels.reshape(-1, 1).astype(np.uint8)})
    return root


TINY_WNIDS = ["n09999999", "n01443537", "n02085620"]  # not in sorted order, as wnids.txt is not


def write_tiny_imagenet(
    root: Path,
    per_class: int = 6,
    val_per_class: int = 3,
    sorted_val: bool = False,
    seed: int = 0,
    wnids: list[str] | None = None,
) -> Path:
    """Tiny-ImageNet-200's tree (three classes) with real JPEGs: wnids.txt, train/<wnid>/images/*.JPEG with the boxes
    file beside them, val/images/*.JPEG and val/val_annotations.txt; `sorted_val`: the validation images moved into
    val/images/<wnid>/ as the official create_val_folder leaves them. One training image is greyscale."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    wnids = wnids or TINY_WNIDS
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")

    def jpeg(path: Path, label: int, grey: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        colour = np.array([(40 + 80 * label) % 256, (200 - 60 * label) % 256, 90 + 50 * (label % 2)])
        pixels = np.clip(colour[None, None] + rng.integers(-30, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        (image.convert("L") if grey else image).save(path, "JPEG", quality=90)

    annotations = []
    for label, wnid in enumerate(sorted(wnids)):
        for i in range(per_class):
            jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", label, grey=label == 0 and i == 0)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(val_per_class):
            name = f"val_{label * val_per_class + i}.JPEG"
            target = folder / "val" / "images" / (wnid if sorted_val else "") / name
            jpeg(target, label)
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (big-endian header: 0, 0, type 0x08, ndim, then one 32-bit size per dimension) of uint8 data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    """MNIST's four IDX files under root/MNIST/raw: class-dependent 28 x 28 blobs (learnable), labels 0..9."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c : 2 * c + 8, 4:24] += 180  # a bar whose height says the class
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", np.clip(images, 0, 255).astype(np.uint8))
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar10"), "cifar10")


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar100"), "cifar100", per_file=100)


@pytest.fixture(scope="session")
def svhn_root(tmp_path_factory) -> Path:
    return write_svhn(tmp_path_factory.mktemp("svhn"))


def compose_train(*overrides: str):
    """The composed `train` config, as `python -m mm_repro train <overrides>` would see it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m mm_repro <args>` in a subprocess, as a user runs it."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    full_env.pop("MM_DATA_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "mm_repro", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def popen_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """`python -m mm_repro <args>` started in the background (for tests that signal it), as a user runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "mm_repro", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
    )


# Tiny but real: narrow nets, a few hundred images, few epochs (a test sets train.epochs, and milestones if it wants
# a decay), a checkpoint at every epoch's end.
TINY = [
    "model.width=4",
    "train.batch_size=20",
    "train.eval_batch_size=50",
    "train.milestones=[]",
    "train.checkpoint_seconds=0",
    "logger=none",
    "deterministic=true",
]


def data_args(root: Path, dataset: str = "cifar10") -> list[str]:
    """The overrides that point a command at the real-format files under `root` (no download)."""
    return [f"dataset={dataset}", f"dataset.root={root}", "dataset.download=false"]


def train_args(root: Path, run_dir: Path, *extra: str, dataset: str = "cifar10") -> list[str]:
    """`train` on the real-format files under `root`, into `run_dir`."""
    return ["train", *data_args(root, dataset), *TINY, f"hydra.run.dir={run_dir}", *extra]


def sweep_args(root: Path, sweep_dir: Path, *extra: str, dataset: str = "cifar10") -> list[str]:
    """`train -m` on the real-format files under `root`, into `sweep_dir`."""
    return ["train", "-m", *data_args(root, dataset), *TINY, f"hydra.sweep.dir={sweep_dir}", *extra]


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Wait until `condition()` holds while `proc` runs; fails after `timeout` seconds or if `proc` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} never happened within {timeout:g} s (exit {proc.poll()})")


class StopAt:
    """A stand-in for StopSignals whose flag rises once `n` training steps have run (a signal mid-run)."""

    steps = 0

    def __init__(self, n: int) -> None:
        self.n = n
        StopAt.steps = 0

    @property
    def received(self) -> int | None:
        return 15 if StopAt.steps >= self.n else None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


@pytest.fixture
def stop_after(monkeypatch):
    """stop_after(n): the next train_jobs call gets a stop signal after its n-th training step."""
    from mm_repro.training import loop as train_module
    from mm_repro.training.cursor import Cursor

    add = Cursor.add

    def counted(self, losses, n):
        StopAt.steps += 1
        return add(self, losses, n)

    def arm(n: int) -> None:
        monkeypatch.setattr(Cursor, "add", counted)
        monkeypatch.setattr(train_module, "StopSignals", lambda: StopAt(n))

    return arm


SYNTHETIC_DATA = ["dataset=synthetic", "dataset.train_size=100", "dataset.test_size=50"]


def tiny_job(run_dir: Path, *overrides: str):
    """A tiny in-process run (mm_repro.training.run.Job) on generated data, or on the dataset=... that `overrides`
    name, with its .hydra/config.yaml as `train` writes it (so `evaluate` can read it)."""
    from omegaconf import OmegaConf

    from mm_repro.training.checks import validate_train
    from mm_repro.training.run import Job

    own_data = any(o.startswith("dataset=") for o in overrides)
    base = [*([] if own_data else SYNTHETIC_DATA), "train.epochs=2", *TINY]
    node = compose_train(*base, *overrides)
    config = OmegaConf.to_container(node, resolve=True)
    return Job(validate_train(node), run_dir, config, hydra_files={"config.yaml": OmegaConf.create(config)})


def sweep_counts(stdout: str) -> dict[str, int]:
    """The counts of the `sweep summary:` line a multirun prints at its end ({'complete runs': 1, 'at chance': 1,
    'failed': 0, ...}); a tiny run is often at chance, which the summary counts apart from the complete runs."""
    (line,) = [x for x in stdout.splitlines() if x.startswith("sweep summary: ")]
    counts = {}
    for part in line.removeprefix("sweep summary: ").split(", "):
        number, label = part.split(" ", 1)
        counts[label] = int(number)
    return counts
