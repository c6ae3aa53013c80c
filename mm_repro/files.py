"""Files written whole or not at all, and JSON read back with one clear reason when it cannot be.

Every write goes to a temporary file in the same directory, is fsync'ed, then renamed over the old file
(`os.replace` is atomic on POSIX), so a crash mid-write leaves the previous version intact, and readers see the old
file or the new one, never a part. Run records, checkpoints, tables, caches and every command's outputs use it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from mm_repro.errors import UserError


def output_dir(path: Path | str, key: str = "out", make: bool = True) -> Path:
    """A command's output directory (`key`=path), made if missing (`make`; else only checked, so that a command can
    refuse early and make it late). What cannot be one is a one-line UserError naming it: a file, a symbolic link to
    nowhere, a place that cannot be written."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise UserError(f"{key}={path} is a symbolic link to {os.readlink(path)}, which does not exist; make it, or "
                        f"choose another {key}=")  # fmt: skip
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}={path} is a file, not a directory; choose another {key}=")
    if not make:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{key}={path} cannot be made: {exc.strerror} ({exc.filename})") from None
    return path


def atomic_write(path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write `data` (bytes, or a function that writes to the open file) to `path` so that readers see the old file
    or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a full disk fails in write(): name the file
            exc.filename = str(path)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict:
    """A JSON object from `path`; ValueError (with the reason) for anything else: unreadable, not UTF-8, not JSON,
    not an object, a directory where the file should be."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError("is not a JSON object")
    return data
