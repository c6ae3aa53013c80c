"""A run's own records, written atomically: metrics.jsonl, result.json, failure.json, checkpoints/last.pt; and the
lock that keeps one process per run directory.

Every write goes to a temporary file in the same directory, is fsync'ed, then renamed over the old file
(`os.replace` is atomic on POSIX), so a crash mid-write leaves the previous version intact. A checkpoint that
cannot be read is an error naming it; it is never overwritten by the run that failed to read it.

A run directory holds at most one outcome: result.json (complete), failure.json (`status` "failed" or "diverged",
with the one-line reason and the epoch), or neither (still training, or stopped: a checkpoint to resume from).
`tables` sorts run directories by it and averages complete runs only.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm_repro.errors import UserError

CHECKPOINT = Path("checkpoints") / "last.pt"
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


# A checkpoint file is one header line, `mm_repro-checkpoint <sha256 of the payload>`, then the payload (what
# torch.save wrote). The digest is checked on every load, so a file damaged on disk or in a copy is refused by name,
# and it names the checkpoint: result.json and eval.json record it, and `tables`/`evaluate` compare it with the
# file's header (reading one line, not the whole file). Files without the header (written before the header existed)
# still load, unchecked.
CHECKPOINT_MAGIC = b"mm_repro-checkpoint "


def save_checkpoint(path: Path, state: dict) -> str:
    """Write `state` to `path` atomically, with its checksum; returns the checksum (the checkpoint's name)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    digest = hashlib.sha256(payload).hexdigest()
    atomic_write(path, CHECKPOINT_MAGIC + digest.encode() + b"\n" + bytes(payload))
    return digest


def checkpoint_digest(path: Path) -> str:
    """The checksum in a checkpoint's header (the sha256 of the whole file for one written without a header)."""
    with open(path, "rb") as f:
        head = f.read(len(CHECKPOINT_MAGIC) + 65)
        if head.startswith(CHECKPOINT_MAGIC):
            return head[len(CHECKPOINT_MAGIC) : len(CHECKPOINT_MAGIC) + 64].decode("ascii", "replace")
        digest = hashlib.sha256(head)
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checkpoint_payload(path: Path) -> bytes | Path:
    """The payload of a checkpoint with a header, checked against its checksum; a headerless file as its path."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(CHECKPOINT_MAGIC):
        return path
    header, _, payload = data.partition(b"\n")
    digest = header[len(CHECKPOINT_MAGIC) :].decode("ascii", "replace")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ValueError(f"its content does not match its checksum {digest[:12]}... (damaged on disk or in a copy)")
    return payload


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by `save_checkpoint`; an unreadable or damaged one is a one-line `UserError`."""
    try:
        payload = _checkpoint_payload(path)
        source = io.BytesIO(payload) if isinstance(payload, bytes) else payload
        state = torch.load(source, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
            raise ValueError("not an mm_repro checkpoint")
    except Exception as exc:  # torch.load raises many types on a damaged file
        raise UserError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            "it was left untouched: move it away, or pass train.resume=false to start over (the old records "
            "are then kept under previous/)"
        ) from None
    if "rng_ranks" not in state or "config" not in state or "device_type" not in state["rng_ranks"][0]:
        raise UserError(
            f"checkpoint {path} was written by an earlier mm_repro (global random streams, one per visible GPU), "
            "which this version cannot continue exactly; pass train.resume=false to start over (the old records "
            "are kept under previous/)"
        )
    return state


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


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Temporary files of an atomic write that a kill interrupted (`.<name>.*.tmp`): never a record, removed."""
    stale = [p for d in (run_dir, run_dir / CHECKPOINT.parent) if d.is_dir() for p in d.glob(".*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class RunLock:
    """An exclusive lock on a run directory (flock on `<run dir>/.lock`): one process trains a run at a time. The
    kernel releases it when the process ends, even by SIGKILL, so a crash never leaves a stale lock."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None
        self.signed = False  # the run is taken over: this process's pid is in the lock file

    def holder(self) -> str | None:
        """The pid written by the process that holds the lock, if another process holds it."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.path.read_text().strip() or "?"
        finally:
            os.close(fd)
        return None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "?"
            raise UserError(
                f"run directory {self.path.parent} is in use by another training process (pid {holder}); wait for it "
                "to finish or stop it, or use another hydra.run.dir"
            ) from None
        self.fd = fd

    def sign(self) -> None:
        """Write this process's pid into the lock file (once the run is taken over: a refused start writes nothing)."""
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        self.signed = True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


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


def run_info(cfg: Any) -> dict:
    """The keys that name a table cell (dataset, model, method, alpha, layers), the seed and the experiment, plus a
    few keys of the setup for a readable label; `setup` (below) is what groups runs."""
    mixes = cfg.method.name != "erm"
    return {
        "dataset": cfg.dataset.name,
        "num_classes": cfg.dataset.num_classes,
        "model": cfg.model.name,
        "width": cfg.model.width,
        "bn_init": cfg.model.bn_init,
        "method": cfg.method.name,
        "alpha": cfg.method.alpha if mixes else None,
        "layers": list(cfg.method.layers) if mixes else [],
        "pairing": cfg.method.pairing,
        "protocol": cfg.protocol.name,
        "loss": cfg.train.loss,
        "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size,
        "precision": cfg.train.precision,
        "per_class_cap": cfg.dataset.per_class_cap,
        "seed": cfg.seed,
        "experiment": cfg.experiment,
    }


# Keys of the resolved config that say which run of a setup this is, not how it was set up.
NOT_SETUP = ("seed", "experiment")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for a nested dict; lists stay values."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out if d else {prefix.rstrip("."): d}


def is_free(key: str) -> bool:
    """Is `key` one of config.RESUME_FREE_KEYS (or below one): a key that cannot change a run's numbers?"""
    from mm_repro.config import RESUME_FREE_KEYS

    return any(key == free or key.startswith(free + ".") for free in RESUME_FREE_KEYS)


def setup_of(config: dict) -> dict[str, Any]:
    """A run's setup: every key of its resolved config that can change its numbers, except the seed and the
    experiment's name. Two runs with the same setup and cell differ only by their seed."""
    return {k: v for k, v in sorted(flatten(config).items()) if k not in NOT_SETUP and not is_free(k)}


def make_result(
    cfg: Any,
    config: dict,
    metrics: list[dict],
    identity: dict,
    params: int,
    wall_seconds: float,
    device: torch.device,
) -> dict:
    """result.json: final-epoch and best-on-test figures (the official code reported the best; we show both), and
    the real time the run took (`wall_seconds`: training, evaluation, checkpoints and records, over every session)
    beside the training steps' median speed (`train_images_per_second`). `identity` holds the run's id (written when
    it started), the checksum of the checkpoint it belongs to and the fingerprints of its data."""
    final = metrics[-1]
    best = min(metrics, key=lambda r: (r["test_error"], r["epoch"]))
    rates = [r["train_images_per_second"] for r in metrics if "train_images_per_second" in r]
    return {
        "run": run_info(cfg),
        "setup": setup_of(config),
        **identity,
        "final": {"test_error": final["test_error"], "test_nll": final["test_nll"], "epoch": final["epoch"]},
        "best": {"test_error": best["test_error"], "test_nll": best["test_nll"], "epoch": best["epoch"]},
        "params": params,
        "epochs": final["epoch"],
        "wall_seconds": wall_seconds,
        "train_images_per_second": float(np.median(rates)) if rates else None,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": config,
    }


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return float(value)


def check_result(result: dict) -> None:
    """Raise ValueError naming the first field of a result.json (as `make_result` writes it) a reader cannot use."""
    run = result.get("run")
    if not isinstance(run, dict):
        raise ValueError("'run' is missing or not an object")
    for key in ("dataset", "model", "method"):
        if not isinstance(run.get(key), str):
            raise ValueError(f"run.{key} is {run.get(key)!r}, not a string")
    if run.get("alpha") is not None:
        _number(run["alpha"], "run.alpha")
    layers = run.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in layers):
        raise ValueError(f"run.layers is {layers!r}, not a list of integers")
    for part in ("final", "best"):
        if not isinstance(result.get(part), dict):
            raise ValueError(f"'{part}' is missing or not an object")
        for key in ("test_error", "test_nll"):
            _number(result[part].get(key), f"{part}.{key}")
    if "setup" in result and not isinstance(result["setup"], dict):
        raise ValueError("'setup' is not an object")


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
