"""A run's checkpoint: the file format (a checksum header, then torch.save's payload), what it holds, how a resume
checks it, and how it is written without stalling training.

`checkpoints/last.pt` holds one run's own model and optimizer state, grad scaler, random streams (one
per DDP rank), epoch, position within the epoch after a mid-epoch stop, the records so far, the wall time and the
resolved config. A run trained packed with others writes the same file as one trained alone, so either can resume
it (mm_repro.training.trainers.packed).

A resume first compares the checkpoint's config with the new one (`config_changes`): any key that changes the
numbers differs, and the resume is refused, naming each key; keys in `config.RESUME_FREE_KEYS` may differ.

Writes (`CheckpointWriter`) copy the state to host memory on the training thread (the only stall), then serialise,
fsync and rename it on a background thread; the next write, the end of the run and a stop signal wait for it.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm_repro.config import ADDED_KEYS
from mm_repro.errors import UserError
from mm_repro.files import atomic_write
from mm_repro.records.result import flatten, is_free

# A checkpoint is the zip file torch.save writes, so that `torch.load(path, weights_only=True)` opens it (format 2;
# `state["format"]`). Its checksum (the sha256 of the zip up to its comment) is in the zip's comment at the end of
# the file, `mm_repro-checkpoint v2 sha256=<hex>`, which readers of the zip ignore: mm_repro checks it on every load,
# so a file damaged on disk or in a copy is refused by name, and it names the checkpoint (result.json and eval.json
# record it; `tables` and `evaluate` read it from the file's last bytes, not the whole file).
#
# Nothing is ever unpickled into code: every load is `weights_only=True` (tensors, numbers, strings, and for the
# earlier formats numpy's array reconstruction, which builds arrays and nothing else). Format 1 (a text header line
# with the sha256 of the payload, up to 9e24e2f) loads after its own checksum. A file with neither checksum is damaged
# (a cut file, a stripped or altered comment), not old: it is refused, unless MM_REPRO_UNCHECKED_CHECKPOINTS=1 opts in
# to the checkpoints written before checksums existed (mm_repro before 9e24e2f), which then load unchecked (still
# weights_only: damage to their numbers would go unnoticed, code cannot run).
UNCHECKED_ENV = "MM_REPRO_UNCHECKED_CHECKPOINTS"
CHECKPOINT_FORMAT = 2
COMMENT = b"mm_repro-checkpoint v2 sha256="
CHECKPOINT_MAGIC = b"mm_repro-checkpoint "  # format 1's header line
EOCD = b"PK\x05\x06"  # a zip's end-of-central-directory record; its comment length is at offset 20
TAIL = 22 + len(COMMENT) + 64


def save_checkpoint(path: Path, state: dict) -> str:
    """Write `state` to `path` atomically, with its checksum in the zip's comment; returns the checksum (the
    checkpoint's name)."""
    buffer = io.BytesIO()
    torch.save({**state, "format": CHECKPOINT_FORMAT}, buffer)
    data = buffer.getvalue()
    end = data.rfind(EOCD) + 20  # torch writes no comment: the record ends with its (zero) length
    digest = hashlib.sha256(data[:end]).hexdigest()
    comment = COMMENT + digest.encode()
    atomic_write(path, data[:end] + struct.pack("<H", len(comment)) + comment)
    return digest


def checkpoint_digest(path: Path) -> str:
    """The checksum a checkpoint names itself by: its zip comment's (format 2), its header's (format 1), or the
    sha256 of the whole file (a file of neither)."""
    with open(path, "rb") as f:
        head = f.read(len(CHECKPOINT_MAGIC) + 65)
        if head.startswith(CHECKPOINT_MAGIC):
            return head[len(CHECKPOINT_MAGIC) : len(CHECKPOINT_MAGIC) + 64].decode("ascii", "replace")
        f.seek(0, 2)
        f.seek(max(f.tell() - TAIL, 0))
        tail = f.read()
        if COMMENT in tail:
            return tail[tail.index(COMMENT) + len(COMMENT) :][:64].decode("ascii", "replace")
        f.seek(0)
        digest = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _numpy_globals() -> list:
    """What the earlier formats' numpy arrays (the random streams' keys) need to be rebuilt under weights_only."""
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _verified(path: Path) -> bytes:
    """The bytes torch.load reads, checked against the checksum the file holds (format 2 or 1); a file with neither is
    refused unless the user opted in to unchecked files (UNCHECKED_ENV)."""
    data = Path(path).read_bytes()
    if data.startswith(CHECKPOINT_MAGIC):  # format 1
        header, _, payload = data.partition(b"\n")
        digest = header[len(CHECKPOINT_MAGIC) :].decode("ascii", "replace")
        if hashlib.sha256(payload).hexdigest() != digest:
            raise _damaged(path, f"its content does not match its checksum {digest[:12]}...")
        return payload
    at = data.rfind(COMMENT)
    if at < 0:
        if os.environ.get(UNCHECKED_ENV) == "1":
            return data
        raise UserError(
            f"checkpoint {path} holds no mm_repro checksum, so it is corrupt (cut, its checksum removed or altered, "
            "or not an mm_repro checkpoint) or older than checksums (mm_repro before 9e24e2f; "
            f"{UNCHECKED_ENV}=1 loads those unchecked, tensors only, damage unnoticed); it was left untouched: move it "
            "away, or pass train.resume=false to start over (the old records are then kept under previous/)"
        )
    end = data.rfind(EOCD, 0, at) + 20
    digest = data[at + len(COMMENT) :].decode("ascii", "replace")
    if end < 20 or hashlib.sha256(data[:end]).hexdigest() != digest:
        raise _damaged(path, f"its content does not match its checksum {digest[:12]}...")
    return data


def _damaged(path: Path, why: str) -> UserError:
    return UserError(
        f"checkpoint {path} is damaged ({why}: changed on disk or in a copy); it was left untouched: move it away, or "
        "pass train.resume=false to start over (the old records are then kept under previous/)"
    )


def load_checkpoint(path: Path, resumable: bool = True) -> dict:
    """Load a checkpoint written by `save_checkpoint` (or an earlier format), never unpickling code; an unreadable,
    damaged or unchecked one is a one-line `UserError`. `resumable`: it must hold what a resume needs
    (checkpoints/last.pt); best.pt holds the model and its identity only."""
    path = Path(path)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "missing"
        raise UserError(f"checkpoint {path} is {what}, not a checkpoint file; move it away, or pass train.resume=false")
    try:
        data = _verified(path)
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
            raise ValueError("not an mm_repro checkpoint")
    except UserError:
        raise
    except Exception as exc:  # torch.load raises many types on a damaged file, or refuses a pickle's code
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise UserError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {reason}); "
            "it was left untouched: move it away, or pass train.resume=false to start over (the old records "
            "are then kept under previous/)"
        ) from None
    if resumable and ("rng_ranks" not in state or "config" not in state or "device_type" not in state["rng_ranks"][0]):
        raise UserError(
            f"checkpoint {path} was written by an earlier mm_repro (global random streams, one per visible GPU), "
            "which this version cannot continue exactly; pass train.resume=false to start over (the old records "
            "are kept under previous/)"
        )
    return state


def config_changes(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every key that differs between two resolved configs, except RESUME_FREE_KEYS; a key of
    config.ADDED_KEYS that one config lacks counts as its old default."""
    a, b = flatten(saved), flatten(new)

    def value(config: dict, key: str) -> Any:
        return config.get(key, ADDED_KEYS.get(key, "<unset>"))

    return [
        (key, value(a, key), value(b, key))
        for key in sorted(set(a) | set(b))
        if not is_free(key) and value(a, key) != value(b, key)
    ]


def describe_changes(run_dir: Path, changes: list[tuple[str, Any, Any]]) -> str:
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
    return (
        f"{run_dir} holds a run trained with another config ({listed}); resuming would mix two runs. Pass "
        "train.resume=false to start over (the old records move to previous/), or use another hydra.run.dir"
    )


def host_buffer(t: torch.Tensor, pin: bool) -> torch.Tensor:
    """An empty host tensor like `t` (its strides kept), in page-locked memory when `pin`."""
    return torch.empty_like(t, device="cpu", pin_memory=pin)


def to_host(obj: Any, device: torch.device | None = None) -> Any:
    """A copy of `obj` whose tensors live in host memory and share nothing with the live training state. From a GPU,
    each tensor is copied into pinned memory without blocking and the device is synchronised once at the end, so the
    training thread waits for one sync, not one per tensor (docs/performance.md)."""
    pin = device is not None and device.type == "cuda"

    def copy(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            return host_buffer(node, pin).copy_(node.detach(), non_blocking=pin)
        if isinstance(node, dict):
            return {k: copy(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return type(node)(copy(v) for v in node)
        return node

    host = copy(obj)
    if pin:
        torch.cuda.synchronize(device)  # the one wait: every non-blocking copy has landed
    return host


class CheckpointWriter:
    """Writes checkpoints on a background thread; `wait()` returns once the last one is on disk (or raises its
    error)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.digests: dict[Path, str] = {}  # the checksum of the last checkpoint written to each path

    def write(self, files: list[tuple[Path, dict]]) -> None:
        """Write each (path, state) in the background, states already in host memory (`to_host`)."""
        self.wait()

        def work() -> None:
            try:
                for path, host_state in files:
                    self.digests[path] = save_checkpoint(path, host_state)
            except BaseException as exc:  # re-raised on the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=work, name="mm_repro-checkpoint", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
