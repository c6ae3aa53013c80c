"""Data-parallel training across processes started by `torchrun` (DistributedDataParallel).

Each rank holds the whole dataset on its device, takes an interleaved share of one epoch order that rank 0 draws and
broadcasts, and mixes within its local batch (its own lam, k and pairing, from its own seed: `seed + rank`).
`train.batch_size` stays the global batch: each rank gets batch_size / world_size. Gradients are averaged by DDP;
rank 0 alone writes records, checkpoints and W&B. Without torchrun (WORLD_SIZE unset or 1) nothing here is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(use_cuda: bool) -> World:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA), or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def broadcast(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Rank 0's tensor on every rank."""
    if world.distributed:
        dist.broadcast(tensor, src=0)
    return tensor


def all_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank if it is true on one (used for stop signals, so that all ranks stop at the same step)."""
    if not world.distributed:
        return flag
    return bool(all_sum(torch.tensor([int(flag)], device=device), world).item())


def gather(obj: Any, world: World) -> list[Any]:
    """Every rank's object, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


class Shards:
    """One session's view of the world: this rank's share of an epoch order and the collectives the training loop
    uses, on the session's device (all of them trivial in a world of one)."""

    def __init__(self, world: World, device: torch.device) -> None:
        self.world, self.device = world, device

    @property
    def size(self) -> int:
        return self.world.size

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    def share(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's interleaved part of an epoch order (all of it without DDP), every rank the same length."""
        return order[self.world.rank :: self.world.size][: len(order) // self.world.size]

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        return broadcast(tensor, self.world)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_sum(tensor, self.world)

    def any_rank(self, flag: bool) -> bool:
        return any_rank(flag, self.world, self.device)

    def gather(self, obj: Any) -> list[Any]:
        return gather(obj, self.world)

    def barrier(self) -> None:
        barrier(self.world)
