"""A table cell and its runs: which paper cell a run reproduces (`matches`), the groups of a cell's runs by their whole
setup and data (`by_setup`) and the labels that tell them apart, the statistics shown (mean, sample std, n), how a
row is named, and the paper's tables themselves (`load_specs`, results/paper/<table>.json). The one place `tables`,
`summary` and the figures read them from."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mm_repro.config import ADDED_KEYS, PAPER_DIR
from mm_repro.errors import UserError
from mm_repro.method import METHODS
from mm_repro.records.scan import Record

# Shown in every row's setup label; any other key that differs between the groups of a cell is shown too.
LABEL_KEYS = ("protocol.name", "train.epochs", "model.arch", "model.width", "train.precision")


MODEL_NAMES = {"preactresnet18": "PreActResNet18", "preactresnet34": "PreActResNet34", "wrn28_10": "Wide-ResNet-28-10"}


MISSING = "—"


def mean_std(values: list[float]) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation (None for n = 1) and n. The sums are exact (math.fsum), so the figures do not
    depend on the order the seeds come in: a report and its re-judging from the JSON print the same digits."""
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std, n


def _lookup(d: dict | None, path: str) -> float | None:
    for part in path.split("/"):  # "/" because names such as shear_0.5 hold dots
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return float(d) if isinstance(d, int | float) else None


# Which epoch's figures a column shows: the last, the best on test (what the official code reported), and, for runs
# that held a validation split out, the test figures at the best validation epoch (model selection done right).
SELECTIONS = ("final", "best", "best_valid")


# Setup keys that make a run another method than its name says: a row matches only runs with its value (absent: the
# key's default, config.ADDED_KEYS); "nonzero" matches any value but the default.
METHOD_KEYS = ("method.block_gradient", "model.dropout")


def metric_values(record: Record, metric: dict, row: dict, selections: tuple[str, ...]) -> list[float | None]:
    """One metric of one run at each selection (an evaluation metric has one value, under the first)."""
    name = metric["name"]
    if "eval" in metric:
        value = _lookup(record.eval, metric["eval"].format(**row))
        return [value] + [None] * (len(selections) - 1)
    recorded = name.replace("accuracy", "error")
    out = []
    for selection in selections:
        figures = record.result.get(selection) or {}
        value = figures.get(recorded)
        if value is not None and name != recorded:
            value = 100 - value
        out.append(value)
    return out


def _setup_value(setup: dict, key: str) -> Any:
    return setup.get(key, ADDED_KEYS[key])


def matches(row: dict, record: Record) -> bool:
    """Does a run reproduce this paper cell? Cited rows (other papers) match nothing."""
    run = record.run
    if "cited" in row:
        return False
    if (row["dataset"], row["model"], row["method"]) != (run.get("dataset"), run.get("model"), run.get("method")):
        return False
    method = METHODS.get(row["method"])
    for key in method.row_keys if method else ():  # the keys that tell this method's rows apart
        want, have = row.get(key), run.get(key)
        if want is None:  # the paper's row does not say: any value
            continue
        if key == "layers" and sorted(map(str, have or [])) != sorted(map(str, want)):
            return False
        if key != "layers" and have != want:
            return False
    for key in METHOD_KEYS:
        want, have = _setup_value(row.get("setup", {}), key), _setup_value(record.setup, key)
        if want == "nonzero" and not have or want != "nonzero" and have != want:
            return False
    return True


def setup_labels(setups: list[dict]) -> list[str]:
    """A short label per setup: the LABEL_KEYS, and every key whose value differs between the setups, except what
    follows from another: where the datasets (models, methods) differ, the dataset's (model's, method's) other keys and
    its files' fingerprints are its own and stay in the CSV. A fingerprint shows its hash's first 8 characters."""
    keys = set().union(*setups) if setups else set()
    differing = sorted(k for k in keys if len({json.dumps(s.get(k), default=str) for s in setups}) > 1)
    named = {group for group in ("dataset", "model", "method") if f"{group}.name" in differing}
    implied = lambda k: (
        (k.split(".")[0] in named and not k.endswith(".name"))
        or (  # noqa: E731
            k.startswith("data.") and "dataset" in named
        )
    )
    shown = [k for k in LABEL_KEYS if k in keys] + [k for k in differing if k not in LABEL_KEYS and not implied(k)]
    return [", ".join(f"{short_key(k)}={_short_value(k, s.get(k))}" for k in shown if s.get(k) is not None)
            for s in setups]  # fmt: skip


def _short_value(key: str, value: Any) -> Any:
    """A data fingerprint ("60000 images, sha256 0123...") as its count and hash prefix; any other value as it is."""
    if key.startswith("data.") and isinstance(value, str) and "sha256 " in value:
        count, digest = value.split(", sha256 ", 1)
        return f"{count.split()[0]}:{digest[:8]}"
    return value


def short_key(key: str) -> str:
    """A setup key as a label shows it: its last part (`train.epochs` -> epochs), `protocol.name` as protocol."""
    return key.removesuffix(".name").split(".")[-1]


def fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return MISSING
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def spread(values: list[float], digits: int = 2) -> str:
    """`mean ± sample std` over seeds as every table of ours writes it; the value alone for one seed, MISSING for
    none (every seed at chance, say)."""
    return fmt(*mean_std(values)[:2], digits) if values else MISSING


def method_label(row: dict) -> str:
    if "name" in row:  # the paper's own name for the row (the regularizer comparison's "Dropout", say)
        return row["name"]
    method = METHODS.get(row["method"])
    if method is None:
        return row["method"]
    mixes = row.get("alpha") is not None and "method.alpha" in method.reads
    alpha = f" (α = {row['alpha']:g})" if mixes else ""
    blocked = " (gradient blocked)" if row.get("setup", {}).get("method.block_gradient") else ""
    return method.label + alpha + blocked


def load_specs(names: list[str] | None = None) -> list[dict]:
    specs = [json.loads(p.read_text()) for p in sorted(PAPER_DIR.glob("*.json"))]
    if names:
        known = [s["table"] for s in specs]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(f"tables={unknown[0]!r} is not a table; choose from {', '.join(known)}")
        specs = [s for s in specs if s["table"] in names]
    return specs


def shown(path: Path | str) -> str:
    """A path as a table lists it: relative to the working directory when it lies below it (a committed table then
    names no one's home directory), else as it is."""
    text = str(path)
    here = str(Path.cwd().resolve())
    return text[len(here) + 1 :] if text.startswith(here + "/") else text


def by_setup(records: list[Record]) -> dict[str, list[Record]]:
    """`records` grouped by their whole setup and data (Record.setup_key: runs of two setups are never one group),
    each group under the label that tells it apart from the others (setup_labels; two groups whose labels coincide
    are numbered), sorted by label."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(record.setup_key, []).append(record)
    setups = [{**g[0].setup, **{f"data.{k}": v for k, v in g[0].data.items()}} for g in groups.values()]
    labels = setup_labels(setups)
    if len(set(labels)) < len(labels):
        labels = [f"{label} [{i + 1}]" for i, label in enumerate(labels)]
    return dict(sorted(zip(labels, groups.values(), strict=True)))
