"""MNIST from its IDX files, as uint8 tensors: `<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`, the
layout torchvision's `MNIST` downloads into. Missing files are fetched, when allowed, with torchvision's
checksum-verified `download_and_extract_archive` from the mirrors and MD5s of torchvision's `MNIST` class; offline,
one line names the files and where they go.

IDX (LeCun et al.): a big-endian header, magic `0x0000 <type> <ndim>` (type 0x08 = unsigned byte), one 32-bit size
per dimension, then the data. Images must be unsigned bytes of shape (N, 28, 28) and labels unsigned bytes in 0..9,
as many as the images; anything else is an error that names the file.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.utils import download_and_extract_archive

from mm_repro.data.download import ensure
from mm_repro.data.types import Arrays
from mm_repro.errors import UserError

FOLDER = Path("MNIST") / "raw"
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
UBYTE = 0x08
# The official test set's images per digit 0..9 (10,000 in all; tests/test_real_data.py reads them off the real
# files): how many test images a run on some digits was measured on, for a record that did not keep the count.
TEST_IMAGES_PER_DIGIT = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


def expected_files() -> list[str]:
    return [str(FOLDER / name) for pair in SPLITS.values() for name in pair]


def _download(root: Path) -> None:
    from torchvision.datasets import MNIST  # torchvision's mirrors and MD5s

    raw = root / FOLDER
    for filename, md5 in MNIST.resources:
        if (raw / filename.removesuffix(".gz")).is_file():
            continue
        errors = []
        for mirror in MNIST.mirrors:
            try:
                download_and_extract_archive(f"{mirror}{filename}", str(raw), filename=filename, md5=md5)
                break
            except (urllib.error.URLError, OSError, RuntimeError) as exc:
                errors.append(f"{mirror}: {type(exc).__name__}: {exc}")
        else:
            raise OSError("; ".join(errors))


PLACE = f"place {', '.join(expected_files())} (the unpacked .gz files of yann.lecun.com/exdb/mnist) there yourself"


def ensure_files(root: Path, allow_download: bool) -> None:
    missing = [f for f in expected_files() if not (root / f).is_file()]
    ensure("mnist", root, missing, allow_download, lambda: _download(root), PLACE)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions, checked."""
    try:
        raw = path.read_bytes()
        if len(raw) < 4 + 4 * ndim or raw[0] != 0 or raw[1] != 0:
            raise ValueError("no IDX header (it must start with two zero bytes)")
        if raw[2] != UBYTE:
            raise ValueError(f"its data type is 0x{raw[2]:02x}, not 0x08 (unsigned byte)")
        if raw[3] != ndim:
            raise ValueError(f"it has {raw[3]} dimensions, not {ndim}")
        shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
        body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(shape)):
            raise ValueError(f"the header says {shape} but {body.size} bytes follow")
        return body.reshape(shape)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is truncated or malformed ({exc}); delete it and download again") from None


def read_mnist(root: Path) -> tuple[Arrays, Arrays]:
    """Train (60,000) and test (10,000) splits: images (N, 1, 28, 28) uint8, labels int64."""
    out = []
    for images_name, labels_name in SPLITS.values():
        images = read_idx(root / FOLDER / images_name, 3)
        labels = read_idx(root / FOLDER / labels_name, 1)
        if images.shape[1:] != (28, 28):
            raise UserError(f"{root / FOLDER / images_name}: images of {images.shape[1:]}, not 28 x 28")
        if len(labels) != len(images):
            raise UserError(
                f"{root / FOLDER / labels_name}: {len(labels)} labels for the {len(images)} images of {images_name}"
            )
        if len(labels) and labels.max() > 9:
            raise UserError(
                f"{root / FOLDER / labels_name}: label {labels.max()} found; MNIST's labels are the digits 0..9 "
                "(nothing is dropped or folded silently)"
            )
        out.append(Arrays(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))))
    return out[0], out[1]
