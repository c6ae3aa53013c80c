"""result.json, written and read here only: the cell a run reproduces, its setup (every config key that can change a
number), its identity, its figures and its provenance; and the check a reader runs before using one."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm_repro import __version__
from mm_repro.config import ADDED_KEYS, DERIVED_KEYS, RESUME_FREE_KEYS
from mm_repro.method import METHODS


def run_info(cfg: Any) -> dict:
    """The keys that name a table cell (dataset, model, method, alpha, layers), the seed and the experiment, plus a
    few keys of the setup for a readable label; `setup` (below) is what groups runs."""
    reads = METHODS[cfg.method.name].reads
    return {
        "dataset": cfg.dataset.name,
        "num_classes": cfg.dataset.num_classes,
        "model": cfg.model.name,
        **({"arch": cfg.model.arch} if getattr(cfg.model, "arch", None) else {}),
        "width": cfg.model.width,
        "bn_init": cfg.model.bn_init,
        "method": cfg.method.name,
        "alpha": cfg.method.alpha if "method.alpha" in reads else None,
        "layers": list(cfg.method.layers) if "method.layers" in reads else [],
        **({"cutmix_prob": cfg.method.cutmix_prob} if "method.cutmix_prob" in reads else {}),
        "pairing": cfg.method.pairing,
        "protocol": cfg.protocol.name,
        "loss": cfg.train.loss,
        "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size,
        "precision": cfg.train.precision,
        "per_class_cap": cfg.dataset.per_class_cap,
        "seed": cfg.seed,
        "experiment": cfg.experiment,
    }


# Keys of the resolved config that say which run of a setup this is, not how it was set up.
NOT_SETUP = ("seed", "experiment")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for a nested dict; lists stay values."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out if d else {prefix.rstrip("."): d}


def is_free(key: str) -> bool:
    """Is `key` one of config.RESUME_FREE_KEYS or config.DERIVED_KEYS (or below one): a key that cannot change a run's
    numbers, or changes them only through keys that are compared?"""
    return any(key == free or key.startswith(free + ".") for free in (*RESUME_FREE_KEYS, *DERIVED_KEYS))


def setup_of(config: dict) -> dict[str, Any]:
    """A run's setup: every key of its resolved config that can change its numbers, except the seed and the
    experiment's name. Two runs with the same setup and cell differ only by their seed (normal_setup says what else is
    left out)."""
    return normal_setup({k: v for k, v in sorted(flatten(config).items()) if k not in NOT_SETUP and not is_free(k)})


# The method keys a method may read (method.base.Method.reads names those it does): the others cannot change its
# numbers, so runs that differ only in them are one run (ERM swept over alpha).
METHOD_KEYS = ("method.alpha", "method.layers", "method.pairing", "method.block_gradient", "method.cutout",
               "method.cutmix_prob")  # fmt: skip


def normal_setup(setup: dict[str, Any]) -> dict[str, Any]:
    """A setup without what cannot change its numbers: a key of config.ADDED_KEYS at its old default, and the method
    keys its method does not read (a sweep of ERM over alpha trains one run several times: `tables` then counts it
    once). Applied when result.json is written and when it is read, so older records compare alike."""
    method = METHODS.get(setup.get("method.name"))
    unread = [k for k in METHOD_KEYS if method and k not in method.reads]
    return {
        k: v
        for k, v in setup.items()
        if k not in unread and not (k in ADDED_KEYS and v == ADDED_KEYS[k]) and not is_free(k)
    }


RECORDED = (
    "test_error",
    "test_nll",
    "test_top5_error",
    "valid_error",
    "valid_nll",
    "valid_top5_error",
    "train_loss",
)


def _figures(row: dict) -> dict:
    """The figures of one epoch's metrics row that result.json keeps (those the run recorded), and the epoch."""
    return {**{k: row[k] for k in RECORDED if k in row}, "epoch": row["epoch"]}


def make_result(
    cfg: Any,
    config: dict,
    metrics: list[dict],
    identity: dict,
    params: int,
    wall_seconds: float,
    device: torch.device,
) -> dict:
    """result.json: final-epoch and best-on-test figures (the official code reported the best; we show both), the
    test figures at the best validation epoch when the run held a validation split out (`best_valid`), and
    the real time the run took (`wall_seconds`: training, evaluation, checkpoints and records, over every session)
    beside the training steps' median speed (`train_images_per_second`). `identity` holds the run's id (written when
    it started), the checksum of the checkpoint it belongs to and the fingerprints of its data."""
    final = metrics[-1]
    best = min(metrics, key=lambda r: (r["test_error"], r["epoch"]))
    rates = [r["train_images_per_second"] for r in metrics if "train_images_per_second" in r]
    selected = {"final": _figures(final), "best": _figures(best)}
    if "valid_error" in final:  # model selection on the validation split: the test figures at its best epoch
        selected["best_valid"] = _figures(min(metrics, key=lambda r: (r["valid_error"], r["epoch"])))
    return {
        "run": run_info(cfg),
        "setup": setup_of(config),
        **identity,
        **selected,
        "params": params,
        "epochs": final["epoch"],
        "wall_seconds": wall_seconds,
        "train_images_per_second": float(np.median(rates)) if rates else None,
        "git_commit": git_commit(),
        "mm_repro_version": __version__,  # the one mark an install from a wheel has (git_commit is None there)
        "torch_version": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": config,
    }


def _number(value: Any, what: str, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} is {value!r}, not a finite number")
    if not low <= value <= high:
        raise ValueError(f"{what} is {value!r}, outside {low:g}..{high:g}")
    return float(value)


def _integer(value: Any, what: str, low: int, high: float = math.inf) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} is {value!r}, not an integer in {low}..{high:g}")
    return value


# The ranges a recorded figure can take: errors are percentages, NLL and the training losses are >= 0.
RANGES = {"error": (0.0, 100.0), "top5_error": (0.0, 100.0), "nll": (0.0, math.inf), "loss": (0.0, math.inf)}


def _check_figure(key: str, value: Any, where: str) -> None:
    kind = next((k for k in ("top5_error", "error", "nll", "loss") if key.endswith(k)), None)
    if kind:
        _number(value, f"{where}{key}", *RANGES[kind])


def check_result(result: dict) -> None:
    """Raise ValueError naming the first field of a result.json (as `make_result` writes it) a reader cannot use."""
    run = result.get("run")
    if not isinstance(run, dict):
        raise ValueError("'run' is missing or not an object")
    for key in ("dataset", "model", "method"):
        if not isinstance(run.get(key), str):
            raise ValueError(f"run.{key} is {run.get(key)!r}, not a string")
    if run.get("alpha") is not None:
        _number(run["alpha"], "run.alpha")
    layers = run.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(k, int | str) and not isinstance(k, bool) for k in layers):
        raise ValueError(f"run.layers is {layers!r}, not a list of points (integers or module names)")
    if "seed" in run:
        _integer(run["seed"], "run.seed", 0)
    # `epochs` (the epochs the run trained) is recorded from issue 12 on; an earlier result is bounded by its final
    epochs = _integer(result["epochs"], "epochs", 1) if "epochs" in result else None
    for part in ("final", "best", "best_valid"):
        if part == "best_valid" and part not in result:
            continue
        if not isinstance(result.get(part), dict):
            raise ValueError(f"'{part}' is missing or not an object")
        for key in ("test_error", "test_nll"):
            _number(result[part].get(key), f"{part}.{key}")
        for key, value in result[part].items():
            _check_figure(key, value, f"{part}.")
        _integer(result[part].get("epoch"), f"{part}.epoch", 1, epochs or math.inf)
    final, best = result["final"], result["best"]
    if epochs is not None and final["epoch"] != epochs:
        raise ValueError(f"final.epoch is {final['epoch']}, not the run's last epoch {epochs}")
    if best["epoch"] > final["epoch"]:
        raise ValueError(f"best.epoch {best['epoch']} is after the final epoch {final['epoch']}")
    if best["test_error"] > final["test_error"]:
        raise ValueError(f"best.test_error {best['test_error']} is above final.test_error {final['test_error']}")
    if "setup" in result and not isinstance(result["setup"], dict):
        raise ValueError("'setup' is not an object")
    planned = result.get("setup", {}).get("train.epochs")
    if planned is not None and result.get("epochs") != planned:
        raise ValueError(
            f"it records {result.get('epochs')!r} epochs of the {planned} its setup trains: not a whole run"
        )


def check_metrics(rows: list[Any], result: dict) -> list[dict]:
    """metrics.jsonl's rows, checked against result.json: one object per epoch 1..epochs in order, each figure a
    finite number in its range, the rows of the final and best epochs those result.json copied. Raises ValueError
    naming the first problem."""
    epochs = result.get("epochs", result["final"]["epoch"])
    if len(rows) != epochs:
        raise ValueError(f"it holds {len(rows)} epoch rows, result.json {epochs} epochs: not the same run")
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"line {i} is not a JSON object")
        if row.get("epoch") != i or isinstance(row.get("epoch"), bool):
            raise ValueError(f"line {i} is epoch {row.get('epoch')!r}, not {i}")
        for key in ("test_error", "test_nll", "train_loss"):
            _number(row.get(key), f"epoch {i} {key}")
        for key, value in row.items():
            _check_figure(key, value, f"epoch {i} ")
    for part in ("final", "best"):
        figures = result[part]
        row = rows[figures["epoch"] - 1]
        if row["test_error"] != figures["test_error"]:
            raise ValueError(
                f"epoch {figures['epoch']}'s test_error {row['test_error']} is not result.json's {part} "
                f"{figures['test_error']}"
            )
    return rows


def git_commit() -> str | None:
    """The commit of the mm_repro checkout (with '-dirty' if modified), or None where mm_repro is not run from its own
    checkout (an install from a wheel, whose site-packages may lie inside some other repository)."""
    here = Path(__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        if Path(top).resolve() != here.parent.parent:
            return None
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")
