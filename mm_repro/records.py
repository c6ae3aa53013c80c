"""A run's own records, written atomically: metrics.jsonl, result.json, checkpoints/last.pt.

Every write goes to a temporary file in the same directory, is fsync'ed, then renamed over the old file
(`os.replace` is atomic on POSIX), so a crash mid-write leaves the previous version intact. A checkpoint that
cannot be read is an error naming it; it is never overwritten by the run that failed to read it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mm_repro.errors import UserError

CHECKPOINT = Path("checkpoints") / "last.pt"
METRICS = "metrics.jsonl"
RESULT = "result.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Rewrite metrics.jsonl (one JSON object per epoch) atomically."""
    atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by `save_checkpoint`; an unreadable one is a one-line `UserError`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
            raise ValueError("not an mm_repro checkpoint")
    except Exception as exc:  # torch.load raises many types on a damaged file
        raise UserError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            "it was left untouched: move it away, or pass train.resume=false to start over (the old records "
            "are then kept under previous/)"
        ) from None
    return state


def archive_previous(run_dir: Path) -> Path | None:
    """Move an earlier run's records into previous/<time>/ so that starting over loses nothing."""
    names = [CHECKPOINT.parent, Path(METRICS), Path(RESULT)]
    present = [n for n in names if (run_dir / n).exists()]
    if not present:
        return None
    dest = run_dir / "previous" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for name in present:
        os.replace(run_dir / name, dest / name)
    return dest


def check_writable(run_dir: Path) -> None:
    """Fail early, with one line, when the run directory cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as exc:
        raise UserError(
            f"run directory {run_dir} is not writable ({exc.strerror}); pick another hydra.run.dir"
        ) from None


def git_commit() -> str | None:
    """The commit of the mm_repro checkout (with '-dirty' if modified), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")
