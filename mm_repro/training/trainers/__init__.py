"""The trainers: what the training loop asks of the runs one process trains together (`Trainer`), and its two
implementations: one run alone (single.SingleTrainer) and several runs packed as one model (packed.PackedTrainer)."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Trainer(Protocol):
    """What the training loop asks of the runs a process trains together: one run (`SingleTrainer`) or a pack
    (trainers.packed.PackedTrainer). Runs are numbered 0..size-1 in the pack's order; `drop` renumbers."""

    param_count: int  # of one run's model

    @property
    def size(self) -> int: ...

    @property
    def lr(self) -> float: ...

    def set_lr(self, lr: float) -> None:
        """The LR of every run (the loop sets it at each epoch's start from the schedule, `lr_at`)."""

    def train_step(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        """One step of every run on its own batch; the losses as a device tensor of shape (size,)."""

    def evaluate(self, loader: Any) -> list[dict[str, float]]:
        """Each run's error (%), NLL and top-5 error (%) on `loader` (test_figures)."""

    def state(self, r: int) -> dict:
        """Run r's model, optimizer and grad-scaler state, in the format of a run alone (live tensors)."""

    def load(self, r: int, state: dict) -> None:
        """Run r's checkpoint (written alone or packed) into its place."""

    def drop(self, r: int) -> None:
        """Run r leaves (it diverged); the others go on untouched."""
