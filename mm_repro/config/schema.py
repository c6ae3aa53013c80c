"""How a command's config becomes a checked, typed object: the dataclass schema it is merged into (a misspelt key or a
value of the wrong type is an error naming the key), and the values each field allows (`rule`: bounds, choices, a
non-empty list; every number must fit float32 and int64, which torch computes in). Every problem is a one-line
`UserError` naming the key, its value and what is allowed."""

from __future__ import annotations

import math
from dataclasses import MISSING, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mm_repro.errors import UserError

FLOAT32_MAX = 3.4028234663852886e38  # torch computes in float32: a larger value becomes inf there


INT64_MAX = 2**63 - 1


def rule(
    default: Any = MISSING,
    *,
    factory: Any = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple | None = None,
    nonempty: bool = False,
    distinct: bool = False,
) -> Any:
    """A schema field with the values it allows (bounds on a number or on each number of a list, a set of choices, a
    list that must not be empty, a list without repeats, such as seeds, whose repeat would count one run twice):
    `to_schema` checks them for every command, so a value torch would reject later is one line naming the key before
    anything runs."""
    limits = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "nonempty": nonempty, "distinct": distinct}
    if factory is not None:
        return field(default_factory=factory, metadata=limits)
    return field(default=default, metadata=limits)


# A rule's bounds: its name in `rule`, how a message writes it, and when a value breaks it.
BOUNDS = (
    ("ge", ">=", lambda v, b: v < b),
    ("gt", ">", lambda v, b: v <= b),
    ("le", "<=", lambda v, b: v > b),
    ("lt", "<", lambda v, b: v >= b),
)


def _number_problem(value: Any, limits: dict) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        bounds = " and ".join(f"{text} {limits[name]:g}" for name, text, _ in BOUNDS if limits.get(name) is not None)
        return "must be a finite number" + (f" {bounds}" if bounds else "")
    if isinstance(value, float) and abs(value) > FLOAT32_MAX:
        return f"is out of float32's range (|x| <= {FLOAT32_MAX:.3g}): torch would compute with inf"
    if isinstance(value, int) and abs(value) > INT64_MAX:
        return "is out of int64's range"
    return None


def _bound_problem(value: Any, limits: dict) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    for name, text, fails in BOUNDS:
        bound = limits.get(name)
        if bound is not None and fails(value, bound):
            return f"must be {text} {bound:g}"
    return None


def check_values(obj: Any, prefix: str = "") -> None:
    """Every value of a schema object against its field's rule and the ranges torch can compute with; the first
    problem is a one-line UserError naming the key, its value and what is allowed."""
    for f in fields(obj):
        value, key, limits = getattr(obj, f.name), f"{prefix}{f.name}", dict(f.metadata)
        if hasattr(type(value), "__dataclass_fields__"):
            check_values(value, f"{key}.")
            continue
        items = value if isinstance(value, list | tuple) else [value]
        if limits.get("nonempty") and isinstance(value, list | tuple) and not value:
            raise UserError(f"{key}=[] must list at least one value")
        if limits.get("distinct") and isinstance(value, list | tuple) and len(set(value)) != len(value):
            raise UserError(f"{key}={list(value)} lists a value twice, which would count one run twice; list each once")
        if limits.get("choices") and value is not None:
            for item in items:
                if item not in limits["choices"]:
                    raise UserError(
                        f"{key}={item!r} is not allowed; choose one of {', '.join(map(str, limits['choices']))}"
                    )
        for item in items:
            problem = _number_problem(item, limits) or _bound_problem(item, limits)
            if problem:
                each = " (each value)" if isinstance(value, list | tuple) else ""
                raise UserError(f"{key}={value!r}{each} {problem}")


# How a wrong-typed value's line names what the key takes, by the schema's annotation.
EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "int | None": "an integer, or null",
    "float | None": "a number, or null",
    "bool | None": "true, false or null",
    "str | None": "a string, or null",
    "list[int]": "a list of integers, e.g. [0,1,2]",
    "list[float]": "a list of numbers, e.g. [0.5,0.5,0.5]",
    "list[str]": "a list of names, e.g. [a,b]",
    "list[Any]": "a list of points, e.g. [0,1,2] or [input,layer1]",
}


def _expected(schema: type, key: str) -> str | None:
    """What the schema's field at dotted `key` takes, in words (None if the key is not a typed field)."""
    node: Any = schema
    for part in key.split("."):
        hints = (
            {f.name: f for f in fields(node)}
            if isinstance(node, type) and hasattr(node, "__dataclass_fields__")
            else {}
        )
        if part not in hints:
            return None
        f = hints[part]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        node = type(default) if hasattr(type(default), "__dataclass_fields__") else f.type
    return EXPECTED.get(str(node))


def _one_line(exc: OmegaConfBaseException, schema: type) -> str:
    """OmegaConf's messages span lines (key, type, object); keep the message and the key, and for a value of the
    wrong type name the type the key takes (`method.layers=0` -> a list of integers)."""
    message = str(exc).splitlines()[0]
    key = getattr(exc, "full_key", None)
    expected = _expected(schema, key) if key else None
    if expected and hasattr(exc, "value"):
        value = exc.value
        return f"{key}={value!r} is of the wrong type: {key} takes {expected}"
    return f"config key {key}: {message}" if key else message


def to_schema(cfg: DictConfig | dict, schema: type) -> Any:
    """Merge `cfg` into `schema` (unknown keys and wrong types are errors), check every value against its field's
    rule (`rule`) and the float32/int64 range, and return the dataclass object."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise UserError(_one_line(exc, schema)) from None
    check_values(obj)
    return obj


def choose(what: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise UserError(f"{what}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def check_number(key: str, value: float, minimum: float, strict: bool) -> None:
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise UserError(f"{key}={value} must be a finite number {bound}")


def as_list(value: Any) -> list:
    """A scalar or a list from the command line (`runs=a` or `runs=[a,b]`) as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
