"""Mixing points named by module, on any nn.Module: manifold mixup on a model that has no `forward_until` /
`forward_from` (torchvision's, timm's, one's own `nn.Sequential`), through a forward hook.

A point is `"input"` (the input is mixed) or a submodule's dotted name (`model.get_submodule(name)`: "layer1",
"features.3"). For one forward, a hook armed on that module replaces its output by the mix (method.mixing.interpolate,
the official expression), so the model runs its own forward and gradients flow through both members of every pair
into the layers before the point, as manifold mixup's do. The module must run once per forward (a module run twice is
not one point: refused) and return one tensor. Why hooks: they need nothing of the model (no split into stages by
hand), and on mm_repro's staged nets the names `layer1`, `layer2` give bitwise the step that points 1 and 2 give
(tests/test_points.py). Integer points keep working on models that expose `mixing_points` (every mm_repro model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from mm_repro.errors import UserError
from mm_repro.method import mixing

INPUT = "input"


def named_points(model: nn.Module) -> list[str]:
    """The names a model offers as mixing points: "input" and its top-level modules (deeper ones by dotted name)."""
    return [INPUT, *(name for name, _ in model.named_children())]


def check_points(model: nn.Module, layers: Sequence[int | str]) -> tuple[int | str, ...]:
    """The eligible set S for `model`, checked: each point once, a name of one of its modules (or "input"), or an
    integer of its `mixing_points`; anything else is one line naming the point and what the model offers."""
    layers = tuple(layers)
    if not layers:
        raise UserError('layers=[] names no mixing point; give at least one ("input" for input mixup)')
    twice = sorted({str(k) for k in layers if layers.count(k) > 1})
    if twice:
        raise UserError(f"layers={list(layers)} lists {twice[0]} twice; name each mixing point once (S is a set)")
    offered = getattr(model, "mixing_points", None)
    for k in layers:
        if isinstance(k, bool) or not isinstance(k, int | str):
            raise UserError(f"mixing point {k!r} is neither a module's name nor an integer point")
        if k == 0:  # the input, on any model
            continue
        if isinstance(k, int) and (offered is None or k not in offered):
            what = f"its points are {list(offered)}" if offered else f"name a module instead: {named_points(model)[:8]}"
            raise UserError(f"mixing point {k} is not a point of {type(model).__name__}; {what}")
        if isinstance(k, str) and k != INPUT:
            try:
                model.get_submodule(k)
            except AttributeError:
                raise UserError(
                    f"mixing point {k!r} is not a module of {type(model).__name__}; its points include "
                    f"{', '.join(named_points(model)[:12])}"
                ) from None
    return layers


@contextlib.contextmanager
def mixed_at(
    model: nn.Module, name: str, lam: torch.Tensor | float, index: torch.Tensor | None, detach: bool = False
) -> Iterator[None]:
    """Inside the block, the output of `model.get_submodule(name)` is mixed (lam, index) in the one forward that runs;
    `detach`: the hidden state is detached before it is mixed (the gradient-blocked ablation)."""
    module = model.get_submodule(name)
    calls = 0

    def hook(_module: nn.Module, _args: object, out: object) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise UserError(f"mixing point {name!r} ran twice in one forward; it is not one point: choose another")
        if not isinstance(out, torch.Tensor):
            raise UserError(f"mixing point {name!r} returns {type(out).__name__}, not one tensor: choose another")
        return mixing.interpolate(out.detach() if detach else out, lam, index)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def state_at(model: nn.Module, point: int | str, x: torch.Tensor) -> torch.Tensor:
    """The hidden state at a mixing point for input `x` (no mixing): the input itself at 0 or "input", a staged
    model's forward_until at an integer, a module's output (through a hook, one forward) at a name."""
    if point in (0, INPUT):
        return x
    if isinstance(point, int):
        return model.forward_until(x, point)
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(point).register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]
