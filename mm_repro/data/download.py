"""Fetching a dataset's standard files with torchvision's checksum-verified downloaders, and the one line a user gets
when that cannot be done (no internet access): what to place where, and the two switches that point elsewhere.
A directory the download created is removed again, so a failed download leaves nothing behind."""

from __future__ import annotations

import shutil
import urllib.error
import zipfile
from collections.abc import Callable
from pathlib import Path

from mm_repro.errors import UserError

POINT_ELSEWHERE = "or point dataset.root=DIR (or MM_DATA_DIR=DIR) at a directory that holds them"


def fetch(name: str, root: Path, download: Callable[[], None], place: str) -> None:
    """Run `download`; on failure one line: `place` (what a user without internet access puts where) and the
    switches. A `root` the attempt created is removed."""
    created = not root.exists()
    try:
        download()
    except (urllib.error.URLError, OSError, RuntimeError, zipfile.BadZipFile) as exc:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        reason = f"{type(exc).__name__}: {exc}"[:240]
        raise UserError(
            f"could not download {name} into {root.resolve()} ({reason}); without internet access, {place}, "
            f"{POINT_ELSEWHERE}"
        ) from None


def ensure(name: str, root: Path, missing: list[str], allow_download: bool, download: Callable[[], None], place: str):
    """`missing` files of dataset `name` under `root`: fetched when allowed, else one line naming them."""
    if not missing:
        return
    if not allow_download:
        raise UserError(
            f"dataset {name}: missing {', '.join(missing)} in {root.resolve()}; {place}, set dataset.download=true, "
            f"{POINT_ELSEWHERE}"
        )
    fetch(name, root, download, place)
