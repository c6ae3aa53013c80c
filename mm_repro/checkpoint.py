"""A run's checkpoint: what it holds, how a resume checks it, and how it is written without stalling training.

`checkpoints/last.pt` holds one run's own model and optimizer state, grad scaler, random streams (one
per DDP rank), epoch, position within the epoch after a mid-epoch stop, the records so far, the wall time and the
resolved config. A run trained packed with others writes the same file as one trained alone, so either can resume
it (mm_repro.packing).

A resume first compares the checkpoint's config with the new one (`config_changes`): any key that changes the
numbers differs, and the resume is refused, naming each key; keys in `config.RESUME_FREE_KEYS` may differ.

Writes (`CheckpointWriter`) copy the state to host memory on the training thread (the only stall), then serialise,
fsync and rename it on a background thread; the next write, the end of the run and a stop signal wait for it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import torch

from mm_repro import records


def config_changes(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every key that differs between two resolved configs, except RESUME_FREE_KEYS."""
    a, b = records.flatten(saved), records.flatten(new)
    return [
        (key, a.get(key, "<unset>"), b.get(key, "<unset>"))
        for key in sorted(set(a) | set(b))
        if not records.is_free(key) and a.get(key, "<unset>") != b.get(key, "<unset>")
    ]


def describe_changes(run_dir: Path, changes: list[tuple[str, Any, Any]]) -> str:
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
    return (
        f"{run_dir} holds a run trained with another config ({listed}); resuming would mix two runs. Pass "
        "train.resume=false to start over (the old records move to previous/), or use another hydra.run.dir"
    )


def to_host(obj: Any) -> Any:
    """A copy of `obj` whose tensors live in host memory and share nothing with the live training state."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_host(v) for v in obj)
    return obj


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
                    self.digests[path] = records.save_checkpoint(path, host_state)
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


class CheckpointPolicy:
    """When a session writes its runs' checkpoints, and the writes. Due at an epoch's end once `seconds` of wall time
    have passed since the last write, or every `every` epochs; the loop also writes after the last epoch and on a
    stop signal. Only the main rank writes; every rank waits for the write to be handed over."""

    def __init__(self, seconds: float, every: int | None, shards: Any) -> None:
        self.seconds, self.every, self.shards = seconds, every, shards
        self.writer = CheckpointWriter()
        self.last = time.perf_counter()

    def due(self, epoch: int) -> bool:
        return time.perf_counter() - self.last >= self.seconds or bool(self.every and epoch % self.every == 0)

    def write(self, files: list[tuple[Path, dict]]) -> None:
        """Each (path, live state): copied to host memory now, written in the background."""
        host = [(path, to_host(state)) for path, state in files]
        if self.shards.is_main and host:
            self.writer.write(host)
        self.shards.barrier()
        self.last = time.perf_counter()

    def digest(self, path: Path) -> str:
        """The checksum of the checkpoint at `path`: of this session's last write there, else read from its header."""
        self.writer.wait()
        return self.writer.digests.get(path) or records.checkpoint_digest(path)

    def wait(self) -> None:
        self.writer.wait()
