"""Each run's own random streams, and its initial weights.

Randomness (docs/protocol.md §2): the official code draws k with python's `random`, lam and the pairing with numpy, and
everything else (initial weights, epoch order, crops and flips) with torch, all from unseeded global generators.
Here each run owns one generator of each kind, seeded from the run's seed (`RunRandom`), and the initial weights are
drawn from torch's CPU generator seeded with the same seed. So a run draws the same numbers whether it trains alone or
packed with others in one process (mm_repro.training.trainers.packed), and its checkpoint holds exactly its own streams.

What a model samples while it trains (dropout, Gaussian input noise: any layer, ours or a user's, torchvision's
`nn.Dropout` and `StochasticDepth` included) comes from torch's default generator of the device, which nothing seeds.
`RunRandom.sampling()` lends that generator the run's own `noise` stream for the training step and takes the stream
back after it, so those draws are the run's too: seeded, saved in its checkpoint and restored on a resume, whatever
else the process drew before (tests/test_randomness.py reseeds the global generator to prove it).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from mm_repro.errors import UserError

NOISE_STREAM = 1  # the noise stream's seed is derived from (run seed, this): independent of the data-order stream


def default_generator(device: torch.device) -> torch.Generator:
    """The generator torch's sampling ops use on `device` when given none (dropout, randn_like, inductor's seeds)."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


class RunRandom:
    """One run's random streams: python (the mixing point k), numpy (lam and the pairing, as the official code),
    torch on the training device (epoch order, crop offsets, flips) and `noise`, also on the device (what the model
    samples while it trains: dropout masks, input noise; lent to it by `sampling`)."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self.python = random.Random(seed)
        self.numpy = np.random.RandomState(seed)  # the legacy stream, as the official np.random.beta/permutation
        self.torch = torch.Generator(device=device)
        self.torch.manual_seed(seed)
        self.noise = torch.Generator(device=device)
        self.noise.manual_seed(int(np.random.SeedSequence([seed, NOISE_STREAM]).generate_state(1)[0]))
        self.noise_restored = True  # False after a resume from a checkpoint written before the stream was saved

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """The device's default generator holds this run's noise stream inside the block; outside it, its own
        state again. Costs two small state copies a step (no device sync)."""
        default = default_generator(self.device)
        outside = default.get_state()
        default.set_state(self.noise.get_state())
        try:
            yield
        finally:
            self.noise.set_state(default.get_state())
            default.set_state(outside)

    def state(self) -> dict:
        """The streams' states, as tensors, numbers and strings only (what torch.load(weights_only=True) reads)."""
        name, keys, pos, has_gauss, cached = self.numpy.get_state()
        return {
            "python": self.python.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
            "torch": self.torch.get_state(),
            "noise": self.noise.get_state(),
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
        # A checkpoint written before the noise stream was saved (mm_repro <= 0.2.0) cannot continue the draws its
        # run made; the stream goes on from its seed and the resume says so (training.ownership.claim).
        self.noise_restored = "noise" in state
        if self.noise_restored:
            self.noise.set_state(state["noise"])


def init_model(builder: Any, seed: int) -> nn.Module:
    """Build a model with initial weights drawn from torch's CPU generator seeded with `seed`, leaving the global
    generator as it was (so that several runs in one process each get their own seed's weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder()
