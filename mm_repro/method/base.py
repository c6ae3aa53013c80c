"""What a method is (`Method`): every other part of mm_repro asks this, never the method's name. A method is one
module of mm_repro/method/ that defines `METHOD`, and one conf/method/<name>.yaml (mm_repro.method.METHODS finds the
modules; a config file without a module is refused in one line)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# (x, one-hot targets, the method's settings (config.MethodConfig), the run's streams) -> (x, targets): what a method
# that transforms the input batch does to it (cutout's hole, CutMix's pasted box and mixed targets)
Transform = Callable[[torch.Tensor, torch.Tensor, Any, Any], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Method:
    """A training method as the rest of mm_repro sees it.

    - `label`: how the paper's tables and our figures name it;
    - `mixes`: "no" (one-hot targets: ERM, cutout), "input" (the input only: input mixup, CutMix) or "hidden" (any
      eligible point, the input included: manifold mixup), which decides the points `method.layers` may hold;
    - `interpolates`: its mix is the official interpolation at a point k (method.mixing: k, lam, the pairing drawn per
      batch), done by the model's forward (training.step.MixedForward) and fusable in a pack;
    - `transform`: otherwise, what it does to the input batch and its targets (None: nothing, ERM);
    - `packable`: the packed trainer can fuse its step (training.trainers.packed);
    - `reads`: the method.* keys its numbers depend on (the others are left out of a run's setup: an ERM run swept
      over alpha is one run, records.result.normal_setup);
    - `row_keys`: the keys of a run (result.json's `run`) that tell its rows apart in a paper table (reports.cells);
    - `rank`: its place in a comparison figure's legend (the baseline first);
    - `check`: what its own settings must satisfy beyond their schema (one line when not)."""

    name: str
    label: str
    mixes: str
    interpolates: bool
    packable: bool
    reads: tuple[str, ...]
    row_keys: tuple[str, ...]
    rank: int
    transform: Transform | None = None
    check: Callable[[Any], None] | None = None
