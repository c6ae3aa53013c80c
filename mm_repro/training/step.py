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
from typing import Any

import numpy as np
import torch
from torch import nn

from mm_repro.method import mixing, points
from mm_repro.training.randomness import RunRandom

# `train.precision`: the dtype each choice computes in (fp32 without autocast). config.PRECISIONS is its keys.
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class MixedForward(nn.Module):
    """The model's forward with mixing at point k, as one module call, so that DDP and torch.compile see one graph. An
    integer k is a staged model's point (forward_until / forward_from); a string, a module's name (method.points).

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
        k: int | str = 0,
        lam: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if lam is None:
            return self.model(x), targets
        if isinstance(k, str) or not hasattr(self.model, "forward_until"):  # a named point (method.points)
            targets = mixing.interpolate(targets, lam, index)
            if k in (points.INPUT, 0):
                return self.model(mixing.interpolate(x, lam, index)), targets
            with points.mixed_at(self.model, k, lam, index, self.block_gradient):
                return self.model(x), targets
        h = self.model.forward_until(x, k)
        if self.block_gradient:  # the hidden state at k (both members of every pair): nothing flows back before k
            h = h.detach()
        h, targets = mixing.mix(h, targets, lam, index)
        return self.model.forward_from(h, k), targets


def compile_module(module: nn.Module, points: int, mode: str | None = None, backend: str | Any = "inductor"):
    """torch.compile with static shapes: one graph per (mixing point, batch size), never one per lam.

    An epoch's last batch may be smaller than the others (the official loader keeps it), so each mixing point can
    need two graphs; dynamo's recompile limit (8 by default) is raised to cover them rather than falling back to
    eager for the later ones. A sweep in one process resets dynamo between jobs (training.loop): a limit per job."""
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
        transform: Callable[[torch.Tensor, torch.Tensor, RunRandom], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        """`net` is a MixedForward (possibly wrapped by DDP or torch.compile); `spec` the interpolation of a method that
        interpolates (None: none); `transform` what a method does to the input batch and its one-hot targets
        (cutout's hole, CutMix's box: method.base.Method.transform, bound to the run's settings)."""
        self.net, self.optimizer, self.loss_fn = net, optimizer, loss_fn
        self.num_classes, self.spec, self.precision, self.rng = num_classes, spec, precision, rng
        self.transform = transform
        self.scaler = torch.amp.GradScaler(rng.device.type, enabled=precision == "fp16")

    def loss(self, x: torch.Tensor, y: torch.Tensor, layers: tuple[int, ...] | None = None) -> torch.Tensor:
        """The training loss of one batch (mixed unless ERM); `layers` restricts k (bench warms up each point)."""
        targets = one_hot(y, self.num_classes)
        if self.transform is not None:
            x, targets = self.transform(x, targets, self.rng)
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
        """One SGD step; returns the batch's loss (a detached device tensor: no host sync). What the model samples
        (dropout) comes from the run's noise stream (RunRandom.sampling)."""
        with self.rng.sampling():
            loss = self.loss(x, y, layers)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()
