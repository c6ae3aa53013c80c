"""Packed training: K runs of a sweep trained at once on one device, each exactly as if alone.

Horizontal fusion (HFTA, Wang et al., MLSys 2021, arXiv 2102.02344) trains the models of several jobs as one: jobs
too small to fill an accelerator (PreActResNet-18 at batch 100) then share it. We fuse with `torch.func`: the K
models' parameters and buffers are stacked (`stack_module_state`) and one forward is `vmap`ped over them; PyTorch's
batching rules turn the convolutions into one grouped convolution and BatchNorm into one over K x C channels, which
is HFTA's fused operators without rewriting the model (docs/performance.md §5; our measurements and the choice:
docs/clusters.md, "Packed sweeps").

Each run keeps what makes it itself: its initial weights (its seed), its random streams
(mm_repro.training.randomness.RunRandom: epoch order, crops, flips, k, lam and partners, drawn by the same calls in the
same order as alone), its BatchNorm statistics, its own k at each step (at each mixing point i the runs with k = i mix,
the others pass through unchanged: `torch.where` selects, so no run sees another's mixing), its own loss mean (the
pack's loss is the sum of the runs' losses, whose gradient with respect to one run's parameters is that run's own), and
its own SGD state (SGD is elementwise, so one SGD over stacked tensors is K SGDs). ERM runs never mix.

Only fp32 runs pack (`PACKABLE_PRECISIONS`). fp16 would share one grad scaler, which skips every run's step when one
run overflows. bf16 would not be the run alone: autocast does not reach through `vmap`, so a packed bf16 run computes
its convolutions, BatchNorm and ReLU in fp32 where the same run alone casts them to bf16 (tests/test_packing.py
records each op's dtype). Such jobs train alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from mm_repro.method import mixing
from mm_repro.models import count_parameters
from mm_repro.training.optim import set_lr
from mm_repro.training.randomness import RunRandom
from mm_repro.training.scoring import test_figures
from mm_repro.training.step import autocast, host_to_device, one_hot

PACKABLE_PRECISIONS = ("fp32",)  # see the module docstring for why fp16 and bf16 train alone


class MixSelectForward(nn.Module):
    """One run's forward in a pack: at each mixing point i in `points`, mix if this run's k == i (a 0-dim tensor,
    -1 for ERM), else pass through. The mixed value is `mixup_process`'s expression, as alone."""

    def __init__(self, model: nn.Module, points: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.points = model, points

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor, k: torch.Tensor, lam: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = x
        for i in range(self.model.num_stages + 1):
            if i > 0:
                h = self.model.stage(i, h)
            if i in self.points:
                h = torch.where(k == i, mixing.interpolate(h, lam, index), h)
        targets = torch.where(k >= 0, mixing.interpolate(targets, lam, index), targets)
        return self.model.head(h), targets


class PackedTrainer:
    """K runs' models and optimizer state, stacked; the interface of trainers.single.SingleTrainer."""

    def __init__(
        self,
        models: list[nn.Module],
        specs: list[mixing.MixSpec | None],
        rngs: list[RunRandom],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        num_classes: int,
        precision: str,
        make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    ) -> None:
        """Models built with each run's seed, each run's mixing method (None: ERM) and streams; the rest is shared
        by the pack: the loss, the classes, the precision and the optimizer's settings (the loop sets the LR)."""
        if precision not in PACKABLE_PRECISIONS:
            raise ValueError(f"train.precision={precision} runs are not packed; only {PACKABLE_PRECISIONS} are")
        self.device = rngs[0].device
        self.keys = list(models[0].state_dict())
        self.param_names = [n for n, _ in models[0].named_parameters()]
        self.specs, self.rngs = list(specs), list(rngs)
        self.num_classes, self.precision = num_classes, precision
        self.loss_fn = vmap(loss_fn)
        self.make_optimizer = make_optimizer
        self.param_count = count_parameters(models[0])
        points = tuple(sorted({k for s in self.specs if s for k in s.layers}))
        self.net = MixSelectForward(copy.deepcopy(models[0]).to("meta"), points)
        params, buffers = stack_module_state(models)
        self._install(params, buffers, None)

    def _install(self, params: dict, buffers: dict, momentum: list | None, lr: float | None = None) -> None:
        self.params = {n: params[n].detach().requires_grad_(True) for n in self.param_names}
        self.buffers = buffers
        self.optimizer = self.make_optimizer(list(self.params.values()))
        if lr is not None:
            set_lr(self.optimizer, lr)
        if momentum is not None:
            for p, buf in zip(self.params.values(), momentum, strict=True):
                if buf is not None:
                    self.optimizer.state[p]["momentum_buffer"] = buf

    @property
    def size(self) -> int:
        return len(self.rngs)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    def _forward(self, params: dict, buffers: dict, *args: torch.Tensor) -> Any:
        state = {f"model.{n}": v for n, v in {**params, **buffers}.items()}
        return functional_call(self.net, state, args)

    def draws(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each run's k (-1: ERM), lam and partners, drawn from its own streams by the calls a lone run makes, and
        sent to the device as one float64 array (exact for k, a float32 lam and any index below 2^53): one pinned,
        non-blocking copy per step, as the single run's permutation."""
        table = np.empty((self.size, 2 + batch_size), dtype=np.float64)
        for r, (spec, rng) in enumerate(zip(self.specs, self.rngs, strict=True)):
            if spec is None:  # ERM: no draw, never mixed
                d = mixing.MixDraw(-1, 1.0, np.arange(batch_size))
            else:
                d = mixing.draw(spec, batch_size, rng.python, rng.numpy)
            table[r, 0], table[r, 1] = d.k, np.float32(d.lam)
            table[r, 2:] = np.arange(batch_size)[::-1] if d.index is None else d.index
        on_device = host_to_device(table, self.device)
        return on_device[:, 0].long(), on_device[:, 1].float(), on_device[:, 2:].long()

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each run's training loss (K,) for inputs (K, B, ...) and labels (K, B)."""
        k, lam, index = self.draws(y.shape[1])
        targets = torch.stack([one_hot(yr, self.num_classes) for yr in y])
        with autocast(self.device, self.precision):
            logits, mixed = vmap(self._forward)(self.params, self.buffers, x, targets, k, lam, index)
        return self.loss_fn(logits, mixed)

    def train_step(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        losses = self.losses(torch.stack(xs), torch.stack(ys))
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach()

    def evaluate(self, loader: Any) -> list[dict[str, float]]:
        """Each run's error (%), NLL and top-5 error on the same batches, as a run alone computes them."""
        state = {f"model.{k}": v for k, v in {**self.params, **self.buffers}.items()}
        forward = vmap(lambda s, x: functional_call(self.net.model, _unprefix(s), (x,)), in_dims=(0, None))
        self.net.eval()
        try:
            return test_figures(lambda x: forward(state, x), loader, self.precision, self.size)
        finally:
            self.net.train()

    def state(self, r: int) -> dict:
        """Run r's own state, in the format of a run trained alone (trainers.single.SingleTrainer.state)."""
        model = {k: (self.params[k] if k in self.params else self.buffers[k])[r].detach() for k in self.keys}
        sgd = self.optimizer.state_dict()
        sgd["state"] = {
            i: {name: value[r] for name, value in entry.items() if name == "momentum_buffer" and value is not None}
            for i, entry in sgd["state"].items()
        }
        return {"model": model, "optimizer": sgd, "scaler": {}}

    @torch.no_grad()
    def load(self, r: int, state: dict) -> None:
        """Put run r's checkpoint (written packed or alone) into its slice of the pack."""
        for k in self.keys:
            (self.params[k] if k in self.params else self.buffers[k])[r].copy_(state["model"][k])
        for i, p in enumerate(self.params.values()):
            saved = state["optimizer"]["state"].get(i, {}).get("momentum_buffer")
            if saved is not None:
                buf = self.optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf[r].copy_(saved)

    def drop(self, r: int) -> None:
        """Run r leaves the pack (it diverged); the others go on with their state, and their LR, untouched."""
        keep = [i for i in range(self.size) if i != r]
        pick = torch.tensor(keep, dtype=torch.long, device=self.device)
        params = {n: p.detach().index_select(0, pick) for n, p in self.params.items()}
        buffers = {n: b.index_select(0, pick) for n, b in self.buffers.items()}
        momentum = [self.optimizer.state[p].get("momentum_buffer") for p in self.params.values()]
        momentum = [None if m is None else m.index_select(0, pick) for m in momentum]
        del self.specs[r], self.rngs[r]
        self._install(params, buffers, momentum, self.lr)


def _unprefix(state: dict) -> dict:
    return {k.removeprefix("model."): v for k, v in state.items()}
