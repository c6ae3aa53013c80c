"""The optimizer and its schedule, as the official code has them (docs/protocol.md §2): SGD with Nesterov momentum
over every parameter, BatchNorm included, and a learning rate that is a pure function of the epoch."""

from __future__ import annotations

from typing import Any

import torch


def build_optimizer(
    params: Any, lr: float, momentum: float, weight_decay: float, nesterov: bool, fused: bool, name: str = "sgd"
) -> torch.optim.Optimizer:
    """The official SGD over `params` (or, `name="adam"`, Adam with L2 weight decay: the optimizer we chose for the
    fully-connected MNIST nets, whose training the paper does not give); fused: one kernel for the update."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, fused=fused or None
    )  # fused=None, not False: torch then picks its foreach path


def lr_at(epoch: int, lr: float, milestones: list[int], gamma: float) -> float:
    """The learning rate of (0-based) epoch `epoch`: lr times gamma for each milestone <= epoch, multiplied in as the
    official `adjust_learning_rate` does at each epoch's start (docs/protocol.md §2). A pure function of the epoch, so a
    run resumed, or left in a pack after another run was dropped, cannot lose its place in the schedule."""
    for m in sorted(milestones):
        if m <= epoch:
            lr *= gamma
    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
