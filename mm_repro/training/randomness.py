"""Each run's own random streams, and its initial weights.

Randomness (docs/protocol.md §2): the official code draws k with python's `random`, lam and the pairing with numpy, and
everything else (initial weights, epoch order, crops and flips) with torch, all from unseeded global generators.
Here each run owns one generator of each kind, seeded from the run's seed (`RunRandom`), and the initial weights are
drawn from torch's CPU generator seeded with the same seed. So a run draws the same numbers whether it trains alone or
packed with others in one process (mm_repro.training.trainers.packed), and its checkpoint holds exactly its own streams.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from mm_repro.errors import UserError


class RunRandom:
    """One run's random streams: python (the mixing point k), numpy (lam and the pairing, as the official code) and
    torch on the training device (epoch order, crop offsets, flips)."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self.python = random.Random(seed)
        self.numpy = np.random.RandomState(seed)  # the legacy stream, as the official np.random.beta/permutation
        self.torch = torch.Generator(device=device)
        self.torch.manual_seed(seed)

    def state(self) -> dict:
        """The streams' states, as tensors, numbers and strings only (what torch.load(weights_only=True) reads)."""
        name, keys, pos, has_gauss, cached = self.numpy.get_state()
        return {
            "python": self.python.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
            "torch": self.torch.get_state(),
            "device_type": self.device.type,
        }

    def load_state(self, state: dict, source: str) -> None:
        if state["device_type"] != self.device.type:
            raise UserError(
                f"{source} was written on {state['device_type']}, and its data-order stream cannot continue on "
                f"{self.device.type}; resume with device={state['device_type']}, or pass train.resume=false"
            )
        self.python.setstate(state["python"])
        name, keys, *rest = state["numpy"]  # keys: a tensor (format 2) or numpy's own array (earlier checkpoints)
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys
        self.numpy.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        self.torch.set_state(state["torch"])


def init_model(builder: Any, seed: int) -> nn.Module:
    """Build a model with initial weights drawn from torch's CPU generator seeded with `seed`, leaving the global
    generator as it was (so that several runs in one process each get their own seed's weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder()
