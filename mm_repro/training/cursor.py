"""Where the runs of a session are in an epoch (`Cursor`): the epoch and the step, each run's epoch order (its
rank's share), its batches (its own order, augmented with its own generator) and its losses so far; restored from the
runs' checkpoints after a mid-epoch stop."""

from __future__ import annotations

import torch

from mm_repro.data import DeviceLoader
from mm_repro.errors import UserError
from mm_repro.records import LastState
from mm_repro.training.distributed import Shards
from mm_repro.training.ownership import resume_point


class Cursor:
    """Where the runs of a session are: the epoch and the step within it, each active run's epoch order (this rank's
    share of it), its losses summed over the epoch so far, the images seen, and the real time of the epoch's steps.
    Lists are in the order of the session's active runs."""

    def __init__(self, loaders: list[DeviceLoader], generators: list[torch.Generator], shards: Shards) -> None:
        self.loaders, self.generators, self.shards = loaders, generators, shards
        self.epoch, self.step, self.seen, self.resumed_seen, self.train_seconds = 0, 0, 0, 0, 0.0
        self.orders: list[torch.Tensor | None] = [None] * len(loaders)
        self.shares: list[torch.Tensor | None] = [None] * len(loaders)
        self.loss_sums = torch.zeros(len(loaders), device=shards.device)

    @property
    def steps_per_epoch(self) -> int:
        loader = self.loaders[0]
        return loader.num_batches(loader.num_images // self.shards.size)

    def restore(self, saved: list[LastState | None]) -> None:
        """Epoch, step and each run's mid-epoch position from the runs' checkpoints (one point: the launcher packs
        runs that resume at the same epoch and step)."""
        points = {resume_point(s) for s in saved}
        if len(points) > 1:
            raise UserError(f"runs at different points (epoch, step) {sorted(points)} cannot be packed together")
        self.epoch, self.step = points.pop()
        for i, state in enumerate(saved):
            position = state.position if state else None
            if position:
                self.orders[i] = position["order"].to(self.shards.device)
                self.shares[i] = self.shards.share(self.orders[i])
                self.loss_sums[i] = position["loss_sum"].to(self.shards.device)
                self.seen = position["seen"]

    def start_epoch(self) -> None:
        if self.step == 0:  # a new epoch: each run draws its order from its own stream
            for i, (loader, g) in enumerate(zip(self.loaders, self.generators, strict=True)):
                self.orders[i] = self.shards.broadcast(loader.order(g))
                self.shares[i] = self.shards.share(self.orders[i])
            self.loss_sums.zero_()
            self.seen, self.train_seconds = 0, 0.0
        self.resumed_seen = self.seen

    def batch(self, i: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Batch i of every active run: its own share of its own order, augmented with its own generator."""
        pairs = [
            loader.batch(share, i, g)
            for loader, share, g in zip(self.loaders, self.shares, self.generators, strict=True)
        ]
        return [x for x, _ in pairs], [y for _, y in pairs]

    def add(self, losses: torch.Tensor, n: int) -> None:
        self.loss_sums += losses.float() * n
        self.seen += n

    def epoch_losses(self) -> list[float]:
        sums = self.shards.all_sum(self.loss_sums.clone())
        return (sums / max(self.seen * self.shards.size, 1)).tolist()

    def images_per_second(self) -> float:
        """Training images per second of this session's steps in the epoch (all ranks)."""
        return (self.seen - self.resumed_seen) * self.shards.size / max(self.train_seconds, 1e-9)

    def position(self, i: int) -> dict | None:
        """Run i's place in the epoch for a mid-epoch checkpoint (None at an epoch's end)."""
        if self.step == 0:
            return None
        partial = self.shards.all_sum(self.loss_sums[i].clone()) / self.shards.size
        return {"step": self.step, "order": self.orders[i], "loss_sum": partial, "seen": self.seen}

    def remove(self, i: int) -> None:
        for items in (self.loaders, self.generators, self.orders, self.shares):
            del items[i]
        self.loss_sums = torch.cat([self.loss_sums[:i], self.loss_sums[i + 1 :]])
