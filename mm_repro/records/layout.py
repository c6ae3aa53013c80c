"""A run directory's files: their names, atomic writes (metrics.jsonl, result.json, failure.json), the archive of an
earlier attempt's records, and JSON read back with one clear reason when it cannot be.

Every write goes to a temporary file in the same directory, is fsync'ed, then renamed over the old file
(`os.replace` is atomic on POSIX), so a crash mid-write leaves the previous version intact. A checkpoint that
cannot be read is an error naming it; it is never overwritten by the run that failed to read it.

A run directory holds at most one outcome: result.json (complete), failure.json (`status` "failed" or "diverged",
with the one-line reason and the epoch), or neither (still training, or stopped: a checkpoint to resume from).
`tables` sorts run directories by it and averages complete runs only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from mm_repro.files import atomic_write, write_json

CHECKPOINT = Path("checkpoints") / "last.pt"
BEST_CHECKPOINT = Path("checkpoints") / "best.pt"  # the model at the best test error so far (as the official code)


METRICS = "metrics.jsonl"


RESULT = "result.json"


FAILURE = "failure.json"


EVAL = "eval.json"


LOCK = ".lock"


TRAIN_LOG = "train.log"  # conf/hydra/job_logging writes it as ${hydra.job.name}.log, the job being `train`


# What a new start moves to previous/<time>/ (train.resume=false, or a failure record of an earlier attempt).
ARCHIVED = (
    CHECKPOINT.parent,
    Path(METRICS),
    Path(RESULT),
    Path(FAILURE),
    Path(EVAL),
    Path(".hydra"),
    Path("reliability.png"),
    Path("flattening.png"),
)


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Rewrite metrics.jsonl (one JSON object per epoch) atomically."""
    atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def archive(run_dir: Path, names: tuple[Path, ...] = ARCHIVED) -> Path | None:
    """Move earlier records into previous/<time>/ so that starting over loses nothing."""
    present = [n for n in names if (run_dir / n).exists()]
    if not present:
        return None
    dest = run_dir / "previous" / time.strftime("%Y%m%d-%H%M%S")
    while dest.exists():
        dest = dest.with_name(dest.name + "+")
    dest.mkdir(parents=True)
    for name in present:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(run_dir / name, dest / name)
    return dest


def holds_a_run(run_dir: Path) -> bool:
    """Does `run_dir` hold records of a run (which a failing start must then leave untouched)?"""
    return any((run_dir / n).exists() for n in (CHECKPOINT, Path(METRICS), Path(RESULT), Path(FAILURE)))


def write_failure(run_dir: Path, status: str, message: str, epoch: int | None = None, **extra: Any) -> bool:
    """failure.json: this run is not a result (status "failed" or "diverged"), and why, in one line. Never beside a
    complete run's result.json: a later attempt that fails leaves a finished run finished. Returns whether written."""
    if (run_dir / RESULT).exists():
        return False
    record = {"status": status, "message": message, "epoch": epoch, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(run_dir / FAILURE, {**record, **extra})
    return True


def remove_stale_temporaries(run_dir: Path, subdirs: tuple[Path | str, ...] = (CHECKPOINT.parent,)) -> list[Path]:
    """Temporary files of an atomic write that a kill interrupted (`.<name>.*.tmp`) in `run_dir` and its `subdirs`:
    never a record, removed. (`tables` calls it on its out= directory too.)"""
    stale = [p for d in (run_dir, *(run_dir / s for s in subdirs)) if d.is_dir() for p in d.glob(".*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
