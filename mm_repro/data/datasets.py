"""The CIFAR-10/100 and SVHN readers, a generated dataset for smoke runs and timing, and the per-class cap, the class
subset and the validation split a run's seed draws (data.table says which reader a dataset has).

Files: when they are missing and `dataset.download` is true, torchvision's checksum-verified downloader fetches the
standard archives (URLs and MD5s are torchvision's own class attributes: data.download); the standard files are then
parsed straight into uint8 tensors (CIFAR python pickles, SVHN `.mat`). They are checked as they are read: images
must be stored as uint8 (nothing is cast silently), labels must lie in 0..num_classes-1, and a truncated or
malformed file is an error that names it. MNIST and Tiny-ImageNet have readers of their own (data.mnist,
data.tiny_imagenet); batches, crops and flips are data.loader's.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10, CIFAR100, SVHN
from torchvision.datasets.utils import download_and_extract_archive, download_url

from mm_repro.data.download import ensure
from mm_repro.data.loader import crop_flip
from mm_repro.data.types import Arrays
from mm_repro.errors import UserError

SYNTHETIC_SEED = 20190609  # the generated dataset is the same for every run, whatever the run's seed


def _cifar_files(name: str) -> tuple[type, list[str]]:
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    files = [f for f, _ in cls.train_list + cls.test_list]
    return cls, files


def _expected_files(name: str) -> list[str]:
    if name in ("cifar10", "cifar100"):
        cls, files = _cifar_files(name)
        return [f"{cls.base_folder}/{f}" for f in files]
    return [SVHN.split_list[s][1] for s in ("train", "test")]


def _download(name: str, root: Path) -> None:
    if name in ("cifar10", "cifar100"):
        cls, _ = _cifar_files(name)
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        return
    for split in ("train", "test"):
        url, filename, md5 = SVHN.split_list[split]
        if not (root / filename).exists():
            download_url(url, str(root), filename, md5)


def ensure_files(name: str, root: Path, allow_download: bool) -> None:
    """Make sure the standard files of `name` are under `root`, downloading them if allowed."""
    missing = [f for f in _expected_files(name) if not (root / f).is_file()]
    place = f"place {', '.join(_expected_files(name))} there yourself"
    ensure(name, root, missing, allow_download, lambda: _download(name, root), place)


def _malformed(path: Path, exc: Exception) -> UserError:
    return UserError(f"{path} is truncated or malformed ({type(exc).__name__}: {exc}); delete it and download again")


class _ArraysOnly(pickle.Unpickler):
    """An unpickler for CIFAR's python batches that builds dicts, lists, strings, numbers and numpy arrays and refuses
    every other class or function: a batch file that would run code is malformed, never executed."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes, as protocol 2 writes them from Python 3 (str -> bytes; nothing else)
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def _read_cifar_file(path: Path, label_key: str) -> Arrays:
    try:
        with open(path, "rb") as f:
            entry = _ArraysOnly(f, encoding="latin1").load()
        data = np.asarray(entry["data"])
        if data.dtype != np.uint8:
            raise ValueError(f"images are stored as {data.dtype}, not uint8")
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"images have shape {data.shape}, not (N, 3072) rows of 3 x 32 x 32 channel planes")
        data = data.reshape(-1, 3, 32, 32)
        labels = _integer_labels(entry[label_key])
        if len(labels) != len(data):
            raise ValueError(f"{len(data)} images but {len(labels)} labels")
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise _malformed(path, exc) from None
    return Arrays(torch.from_numpy(data.copy()), torch.from_numpy(labels))


def _integer_labels(raw: object) -> np.ndarray:
    """Labels as int64, only when they are stored as integers (a float or text label is an error, never rounded)."""
    labels = np.asarray(raw)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(f"labels are stored as {labels.dtype} with shape {labels.shape}, not a list of integers")
    return labels.astype(np.int64)


def _concat(parts: list[Arrays]) -> Arrays:
    return Arrays(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def read_cifar(name: str, root: Path) -> tuple[Arrays, Arrays]:
    """CIFAR-10 / CIFAR-100 (fine labels) from the python-pickle batches under root."""
    cls, _ = _cifar_files(name)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    folder = root / cls.base_folder
    train = _concat([_read_cifar_file(folder / f, label_key) for f, _ in cls.train_list])
    test = _concat([_read_cifar_file(folder / f, label_key) for f, _ in cls.test_list])
    return train, test


def _read_svhn_file(path: Path) -> Arrays:
    from scipy.io import loadmat  # scipy is slow to import; only SVHN needs it

    try:
        mat = loadmat(str(path))
        raw = np.asarray(mat["X"])
        if raw.dtype != np.uint8:
            raise ValueError(f"images are stored as {raw.dtype}, not uint8")
        if raw.ndim != 4 or raw.shape[:3] != (32, 32, 3):
            raise ValueError(f"images have shape {raw.shape}, not (32, 32, 3, N)")
        images = np.transpose(raw, (3, 2, 0, 1))  # HWCN -> NCHW
        y = np.asarray(mat["y"])
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        stored = _integer_labels(y)
        outside = stored[(stored < 1) | (stored > 10)]
        if len(outside):
            raise ValueError(f"label {outside[0]} found; SVHN stores the digits 1..9 as 1..9 and 0 as 10")
        labels = stored % 10  # the digit 0 is stored as label 10
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise _malformed(path, exc) from None
    return Arrays(torch.from_numpy(images.copy()), torch.from_numpy(labels))


def read_svhn(root: Path) -> tuple[Arrays, Arrays]:
    """SVHN train (all 73,257 images; `extra` unused, as in the official code) and test, from the `.mat` files."""
    return tuple(_read_svhn_file(root / SVHN.split_list[s][1]) for s in ("train", "test"))


def make_synthetic(num_classes: int, train_size: int, test_size: int) -> tuple[Arrays, Arrays]:
    """A learnable generated dataset: each class is a coloured low-frequency pattern, shifted and noised."""
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    templates = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=40, mode="bilinear")

    def split(n: int) -> Arrays:
        labels = torch.arange(n) % num_classes
        shifts = torch.randint(0, 9, (2, n), generator=g)
        images = crop_flip(templates[labels], shifts[0], shifts[1], None, 32)
        images = images + 0.25 * torch.randn(images.shape, generator=g)
        return Arrays((images.clamp(0, 1) * 255).round().to(torch.uint8), labels)

    return split(train_size), split(test_size)


def random_split(images: int, seed: int) -> Arrays:
    """Random uint8 images of CIFAR's shape with random labels: for timing (`bench`), where pixels don't matter."""
    g = torch.Generator().manual_seed(seed)
    return Arrays(
        torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (images,), generator=g),
    )


def only_classes(split: Arrays, classes: list[int]) -> Arrays:
    """The images of `split` whose label is one of `classes` (their labels kept as they are)."""
    keep = torch.isin(split.labels, torch.tensor(classes))
    return Arrays(split.images[keep], split.labels[keep])


def cap_per_class(split: Arrays, cap: int, seed: int) -> Arrays:
    """At most `cap` images per class, drawn with the run's seed (the official SVHN runs cap at 7325)."""
    rng = np.random.default_rng(seed)
    labels = split.labels.numpy()
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:cap] for c in np.unique(labels)])
    keep.sort()
    return Arrays(split.images[keep], split.labels[keep])


def hold_out_per_class(split: Arrays, per_class: int, seed: int) -> tuple[Arrays, Arrays]:
    """(train, valid): `per_class` images of each class held out of training, drawn with the run's seed (the
    official `--valid_labels_per_class`; its own stream, so the held-out images do not depend on a later cap)."""
    rng = np.random.default_rng([seed, 1])
    labels = split.labels.numpy()
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() <= per_class:
        c = classes[counts.argmin()]
        raise UserError(
            f"dataset.valid_per_class={per_class}: class {c} has only {counts.min()} training images, so none would "
            f"be left to train on; choose at most {counts.min() - 1} (0: no validation split)"
        )
    valid = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes])
    mask = np.ones(len(labels), dtype=bool)
    mask[valid] = False
    valid.sort()
    keep = np.flatnonzero(mask)
    return Arrays(split.images[keep], split.labels[keep]), Arrays(split.images[valid], split.labels[valid])
