"""The methods and the mix: mixing (Mixup and Manifold Mixup as tensor operations, the only place the mix is
written), points (mixing points named by module, on any model), the losses, and one module per method (erm, mixup,
manifold, cutout, cutmix), each defining `METHOD` (method.base.Method: what it is). `METHODS` finds them: adding a
method is one module here and one conf/method/<name>.yaml; a config file alone is refused in one line (`method_of`)."""

from __future__ import annotations

import importlib
import pkgutil

from mm_repro.errors import UserError
from mm_repro.method.base import Method


def _discover() -> dict[str, Method]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "METHOD", None), Method):
            found[module.METHOD.name] = module.METHOD
    return dict(sorted(found.items(), key=lambda item: item[1].rank))


METHODS: dict[str, Method] = _discover()


def method_of(name: str) -> Method:
    """The method named `name`, or one line: a conf/method file without its module in mm_repro/method/ adds nothing."""
    if name not in METHODS:
        raise UserError(
            f"method={name!r} has no implementation in mm_repro/method/ (a config file alone adds no method); the "
            f"methods are {', '.join(METHODS)}"
        )
    return METHODS[name]
