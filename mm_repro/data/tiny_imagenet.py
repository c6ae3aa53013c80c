"""Tiny-ImageNet-200 as uint8 tensors: the JPEG tree decoded once into a cache beside the data, then read like CIFAR.

Layout, as the archive `tiny-imagenet-200.zip` unpacks under `dataset.root`: `tiny-imagenet-200/wnids.txt` (the 200
class ids), `train/<wnid>/images/*.JPEG` (500 per class) and `val/images/*.JPEG` labelled by `val/val_annotations.txt`
(name, wnid, box; tab-separated), which the official code uses as its test set. The official `create_val_folder` moves
each validation image into `val/images/<wnid>/`; that layout is read too (and a half-moved tree: an image found in its
class folder takes that class). Classes are numbered in sorted-wnid order and images sorted by (class, file name), as
`torchvision.datasets.ImageFolder` orders them, so both validation layouts give the same arrays. Every image is
converted to RGB as PIL's `convert("RGB")` does (a few are greyscale) and must be 64 x 64; a file PIL cannot decode (a
corrupt or truncated JPEG) is an error naming it.

Cache (docs/performance.md §2: no epoch decodes an image): `tiny-imagenet-200/.mm_repro-cache/<split>-<key>.npz`, the
split's images (N, 3, 64, 64) and labels, keyed by a hash of every file's name, class and content: a changed,
swapped, added or removed file gives another key, and the split is decoded again (older cache files of the split are
removed). Written atomically, so an interrupted decode leaves no cache behind. Where the data directory cannot be
written (read-only shared storage), the cache goes to `$MM_CACHE_DIR` (default `~/.cache/mm_repro`) under
`tiny-imagenet-200-<hash of the data directory's path>/`, and is looked for there first.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.utils import download_and_extract_archive

from mm_repro.data.download import ensure
from mm_repro.data.types import Arrays
from mm_repro.errors import UserError
from mm_repro.files import atomic_write

FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE = "tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # of the archive the cs231n site serves (248,100,043 bytes)
SIZE = 64
CACHE = ".mm_repro-cache"


def ensure_files(root: Path, allow_download: bool) -> None:
    """The archive through torchvision's checksum-verified downloader, unpacked under root; offline, one line."""
    folder = root / FOLDER
    missing = [p for p in ("wnids.txt", "train", "val") if not (folder / p).exists()]
    place = (
        f"put {ARCHIVE} (md5 {MD5}, from {URL}) in {root.resolve()} and unzip it there, so that "
        f"{root.resolve() / FOLDER} holds wnids.txt, train/ and val/"
    )
    fetch = lambda: download_and_extract_archive(URL, str(root), filename=ARCHIVE, md5=MD5)  # noqa: E731
    ensure("tiny_imagenet", root, [f"{FOLDER}/{m}" for m in missing], allow_download, fetch, place)


def _wnids(folder: Path) -> list[str]:
    path = folder / "wnids.txt"
    wnids = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
    if not wnids:
        raise UserError(f"{path} lists no class ids")
    return wnids


def _train_files(folder: Path, classes: dict[str, int]) -> list[tuple[Path, int]]:
    files = []
    for wnid, label in classes.items():
        found = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        if not found:
            raise UserError(f"{folder / 'train' / wnid / 'images'} holds no JPEG; the train split is incomplete")
        files += [(p, label) for p in found]
    return files


def _val_files(folder: Path, classes: dict[str, int]) -> list[tuple[Path, int]]:
    images = folder / "val" / "images"
    annotations = folder / "val" / "val_annotations.txt"
    by_name: dict[str, int] = {}
    if annotations.exists():
        for n, line in enumerate(annotations.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in classes:
                raise UserError(f"{annotations} line {n}: {line[:80]!r} names no class of wnids.txt")
            by_name[parts[0]] = classes[parts[1]]
    chosen: dict[str, tuple[Path, int]] = {}  # one image per file name, whichever layouts hold it
    for path in images.glob("*.JPEG"):  # the layout as distributed
        if path.name not in by_name:
            raise UserError(f"{path} is not listed in {annotations}; its class is unknown")
        chosen[path.name] = (path, by_name[path.name])
    foldered: dict[str, Path] = {}
    for wnid, label in classes.items():  # the layout the official create_val_folder leaves (it takes precedence)
        for path in (images / wnid).glob("*.JPEG"):
            if path.name in foldered:
                raise UserError(f"{path.name} is in two class folders ({foldered[path.name].parent}, {path.parent})")
            foldered[path.name] = path
            chosen[path.name] = (path, label)
    if not chosen:
        raise UserError(f"{images} holds no JPEG (neither val/images/*.JPEG nor val/images/<wnid>/*.JPEG)")
    return sorted(chosen.values(), key=lambda f: (f[1], f[0].name))


def _content(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _key(folder: Path, files: list[tuple[Path, int]]) -> str:
    """The split's cache key: every file's name, class and content (two images swapped between classes, same sizes
    and times, give another key; reading 100,000 small JPEGs costs seconds, decoding them minutes)."""
    digest = hashlib.sha256()
    with ThreadPoolExecutor() as pool:  # hashlib releases the GIL on large buffers; the reads overlap
        contents = list(pool.map(_content, [p for p, _ in files]))
    for (path, label), content in zip(files, contents, strict=True):
        digest.update(f"{path.relative_to(folder)}\t{content}\t{label}\n".encode())
    return digest.hexdigest()[:16]


def _decode(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise UserError(
            f"{path} is not a readable JPEG ({type(exc).__name__}: {exc}); replace it from {ARCHIVE}"
        ) from (None)
    if rgb.shape != (SIZE, SIZE, 3):
        raise UserError(f"{path} is {rgb.shape[1]} x {rgb.shape[0]} pixels; Tiny-ImageNet images are 64 x 64")
    return rgb


def cache_dirs(folder: Path) -> list[Path]:
    """Where a split's cache may be: beside the data, then under $MM_CACHE_DIR (for data on read-only storage)."""
    home = Path(os.environ.get("MM_CACHE_DIR") or Path.home() / ".cache" / "mm_repro")
    tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return [folder / CACHE, home / f"{FOLDER}-{tag}"]


def _read_split(folder: Path, split: str, files: list[tuple[Path, int]]) -> Arrays:
    key = _key(folder, files)
    for where in cache_dirs(folder):
        cache = where / f"{split}-{key}.npz"
        if cache.exists():
            try:
                with np.load(cache) as held:
                    return Arrays(torch.from_numpy(held["images"]), torch.from_numpy(held["labels"]))
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # an unreadable cache is rebuilt
    images = np.empty((len(files), 3, SIZE, SIZE), dtype=np.uint8)
    with ThreadPoolExecutor() as pool:  # PIL releases the GIL while it decodes
        for i, rgb in enumerate(pool.map(_decode, [p for p, _ in files])):
            images[i] = rgb.transpose(2, 0, 1)
    labels = np.array([label for _, label in files], dtype=np.int64)

    def write(f: io.BufferedWriter) -> None:
        np.savez(f, images=images, labels=labels)

    for where in cache_dirs(folder):
        try:
            for old in where.glob(f"{split}-*.npz"):
                old.unlink(missing_ok=True)
            atomic_write(where / f"{split}-{key}.npz", write)
            break
        except OSError as exc:  # read-only or not ours: the next place (the last one's error is the user's to see)
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or where == cache_dirs(folder)[-1]:
                raise
    return Arrays(torch.from_numpy(images), torch.from_numpy(labels))


def read_tiny_imagenet(root: Path) -> tuple[Arrays, Arrays]:
    """Train and validation (our test) splits of Tiny-ImageNet-200 under root/tiny-imagenet-200."""
    folder = root / FOLDER
    classes = {wnid: i for i, wnid in enumerate(_wnids(folder))}
    train = _read_split(folder, "train", _train_files(folder, classes))
    test = _read_split(folder, "val", _val_files(folder, classes))
    return train, test
