"""One training step and one evaluation, built from what they use: the model, the optimizer, the loss, the mixing
method (alpha, eligible layers, pairing) and the precision; nothing here reads a run's whole config.

The step is the official one (docs/protocol.md §2): draw k, lam and the pairing (mm_repro.method.mixing), forward to
point k, mix hidden states and one-hot targets, forward from k, loss in fp32 on the soft targets, backward, SGD. The
optimizer is the official `SGD(lr, momentum, weight_decay, nesterov)` over every parameter, BN included; `fused` runs
its update as one kernel (the same arithmetic to float32 rounding, tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mm_repro.method import mixing
from mm_repro.method.cutout import cutout
from mm_repro.models import count_parameters
from mm_repro.training.runtime import RunRandom

# `train.precision`: the dtype each choice computes in (fp32 without autocast). config.PRECISIONS is its keys.
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class MixedForward(nn.Module):
    """The model's forward with mixing at point k, as one module call, so that DDP and torch.compile see one graph.

    `lam` is a 0-dim tensor, never a Python float, so a compiled graph is not recompiled for every lam; k is a
    Python int, so there is at most one graph per mixing point (docs/performance.md §4). `lam=None` mixes nothing (ERM);
    `index=None` pairs each example with the reversed batch (`pairing=flip`). `block_gradient` detaches the hidden
    state at k before it is mixed (`method.block_gradient`, the paper's gradient-blocked ablation)."""

    def __init__(self, model: nn.Module, block_gradient: bool = False) -> None:
        super().__init__()
        self.model, self.block_gradient = model, block_gradient

    def forward(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        k: int = 0,
        lam: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if lam is None:
            return self.model(x), targets
        h = self.model.forward_until(x, k)
        if self.block_gradient:  # the hidden state at k (both members of every pair): nothing flows back before k
            h = h.detach()
        h, targets = mixing.mix(h, targets, lam, index)
        return self.model.forward_from(h, k), targets


def build_optimizer(
    params: Any, lr: float, momentum: float, weight_decay: float, nesterov: bool, fused: bool
) -> torch.optim.SGD:
    """The official SGD over `params`; fused: one kernel for the update."""
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


def compile_module(module: nn.Module, points: int, mode: str | None = None, backend: str | Any = "inductor"):
    """torch.compile with static shapes: one graph per (mixing point, batch size), never one per lam.

    An epoch's last batch may be smaller than the others (the official loader keeps it), so each mixing point can
    need two graphs; dynamo's recompile limit (8 by default) is raised to cover them rather than falling back to
    eager for the later ones. A sweep in one process resets dynamo between jobs (train.py), so the limit is per job."""
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 2 * max(points, 1))
    return torch.compile(module, mode=None if mode == "default" else mode, backend=backend, dynamic=False)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast, or nothing for fp32."""
    dtype = PRECISION_DTYPES[precision]
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float one-hot targets; scatter_ rather than F.one_hot, which waits for the GPU to check its input."""
    return torch.zeros(len(y), num_classes, device=y.device).scatter_(1, y[:, None], 1.0)


def host_to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy array on the device without a host sync: one pinned, non-blocking copy on CUDA, none on the CPU."""
    t = torch.from_numpy(array)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def index_on(index: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    """The numpy permutation on the device (None: `pairing=flip`, nothing to copy)."""
    return None if index is None else host_to_device(index, device)


class TrainStep:
    """One training step of one run: mixing draw, mixed forward, loss in fp32, backward, optimizer step."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        num_classes: int,
        spec: mixing.MixSpec | None,
        precision: str,
        rng: RunRandom,
        cutout: int | None = None,
    ) -> None:
        """`net` is a MixedForward (possibly wrapped by DDP or torch.compile); `spec=None` is ERM; `cutout` is the
        hole's side for method=cutout (ERM on cut inputs, mm_repro.method.cutout)."""
        self.net, self.optimizer, self.loss_fn = net, optimizer, loss_fn
        self.num_classes, self.spec, self.precision, self.rng = num_classes, spec, precision, rng
        self.cutout = cutout
        self.scaler = torch.amp.GradScaler(rng.device.type, enabled=precision == "fp16")

    def loss(self, x: torch.Tensor, y: torch.Tensor, layers: tuple[int, ...] | None = None) -> torch.Tensor:
        """The training loss of one batch (mixed unless ERM); `layers` restricts k (bench warms up each point)."""
        targets = one_hot(y, self.num_classes)
        if self.cutout:
            x = cutout(x, self.cutout, self.rng.numpy)
        with autocast(x.device, self.precision):
            if self.spec is None:
                logits, targets = self.net(x, targets)
            else:
                spec = self.spec if layers is None else mixing.MixSpec(self.spec.alpha, layers, self.spec.pairing)
                d = mixing.draw(spec, len(y), self.rng.python, self.rng.numpy)
                lam = torch.full((), d.lam, dtype=torch.float32, device=x.device)
                logits, targets = self.net(x, targets, d.k, lam, index_on(d.index, x.device))
        return self.loss_fn(logits, targets)

    def step(self, x: torch.Tensor, y: torch.Tensor, layers: tuple[int, ...] | None = None) -> torch.Tensor:
        """One SGD step; returns the batch's loss (a detached device tensor: no host sync)."""
        loss = self.loss(x, y, layers)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


TOP5_MIN_CLASSES = 6  # top-5 error is recorded for datasets with more than 5 classes (it is 0 otherwise)


@torch.no_grad()
def test_figures(
    logits_of: Callable[[torch.Tensor], torch.Tensor], loader: Any, precision: str, runs: int
) -> list[dict[str, float]]:
    """Error (%), NLL (mean cross-entropy) and, with more than 5 classes, top-5 error (%) of `runs` models whose logits
    for a batch `logits_of` gives as (runs, batch, classes), over every image of `loader`; one host sync at the end.
    A single run and a pack evaluate through this alone."""
    device = loader.labels.device
    wrong = torch.zeros(runs, device=device)
    wrong5 = torch.zeros(runs, device=device)
    nll = torch.zeros(runs, device=device, dtype=torch.float64)
    top5 = False
    for x, y in loader.batches(loader.order()):
        with autocast(device, precision):
            logits = logits_of(x).float()
        wrong += (logits.argmax(2) != y).sum(1)
        if logits.shape[2] >= TOP5_MIN_CLASSES:
            top5 = True
            wrong5 += (~(logits.topk(5, dim=2).indices == y[None, :, None]).any(2)).sum(1)
        nll += F.cross_entropy(logits.transpose(1, 2), y.expand(runs, -1), reduction="none").double().sum(1)
    n = loader.num_images
    out = [{"error": 100.0 * w / n, "nll": v / n} for w, v in zip(wrong.tolist(), nll.tolist(), strict=True)]
    if top5:
        for figures, w5 in zip(out, wrong5.tolist(), strict=True):
            figures["top5_error"] = 100.0 * w5 / n
    return out


class Evaluator:
    """Test error (%) and test NLL of one model, in the run's precision and memory format (the loader's), compiled
    when the run is."""

    def __init__(self, model: nn.Module, precision: str, compiled: Callable[[nn.Module], Any] | None = None) -> None:
        self.model, self.precision = model, precision
        self.forward = compiled(model) if compiled else model

    def __call__(self, loader: Any) -> dict[str, float]:
        self.model.eval()
        try:
            return test_figures(lambda x: self.forward(x)[None], loader, self.precision, 1)[0]
        finally:
            self.model.train()


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
