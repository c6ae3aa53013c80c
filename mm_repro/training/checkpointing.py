"""When a session writes its runs' checkpoints (the time and epoch policy, docs/trust.md), and
the hand-over of their state to the background writer (records.checkpoint.CheckpointWriter)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from mm_repro.records.checkpoint import CheckpointWriter, checkpoint_digest, to_host


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

    def write(self, files: list[tuple[Path, dict]], resets_clock: bool = True) -> None:
        """Each (path, live state): copied to host memory now, written in the background. A best-checkpoint write
        alone (`resets_clock=False`) leaves the time policy's clock for last.pt as it was."""
        host = [(path, to_host(state, self.shards.device)) for path, state in files]
        if self.shards.is_main and host:
            self.writer.write(host)
        self.shards.barrier()
        if resets_clock:
            self.last = time.perf_counter()

    def digest(self, path: Path) -> str:
        """The checksum of the checkpoint at `path`: of this session's last write there, else read from its header."""
        self.writer.wait()
        return self.writer.digests.get(path) or checkpoint_digest(path)

    def wait(self) -> None:
        self.writer.wait()


def finite_state(state: dict, loss_sum: torch.Tensor) -> bool:
    """Are every floating tensor of a run's model and optimizer state, and its loss so far, finite? (One sync.)"""
    flags = [torch.isfinite(loss_sum).all()]
    stack: list[Any] = [state["model"], state["optimizer"].get("state", {})]
    while stack:
        node = stack.pop()
        if isinstance(node, torch.Tensor):
            if node.is_floating_point():
                flags.append(torch.isfinite(node).all())
        elif isinstance(node, dict):
            stack.extend(node.values())
    return bool(torch.stack(flags).all())
