"""One run alone: its model, optimizer, step and evaluation, the `Trainer` of a pack of one."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mm_repro.models import count_parameters
from mm_repro.training.optim import set_lr
from mm_repro.training.scoring import Evaluator
from mm_repro.training.step import TrainStep


class SingleTrainer:
    """One run's model, optimizer, step and evaluation: the `Trainer` of a pack of one."""

    size = 1

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, step: TrainStep, evaluator: Evaluator
    ) -> None:
        self.model, self.optimizer, self.step, self.evaluator = model, optimizer, step, evaluator
        self.param_count = count_parameters(model)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    def train_step(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        """One step; the loss as a device tensor of shape (1,)."""
        return self.step.step(xs[0], ys[0])[None]

    def evaluate(self, loader: Any) -> list[dict[str, float]]:
        return [self.evaluator(loader)]

    def state(self, r: int) -> dict:
        """The run's model, optimizer and grad-scaler state (live tensors: copy before keeping). The LR is not
        state: it follows from the epoch (`lr_at`)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.step.scaler.state_dict(),
        }

    def load(self, r: int, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step.scaler.load_state_dict(state["scaler"])

    def drop(self, r: int) -> None:
        """A diverged run leaves the pack; a pack of one simply ends."""
