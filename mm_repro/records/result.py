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


def run_info(cfg: Any) -> dict:
    """The keys that name a table cell (dataset, model, method, alpha, layers), the seed and the experiment, plus a
    few keys of the setup for a readable label; `setup` (below) is what groups runs."""
    from mm_repro.config import NOT_MIXING

    mixes = cfg.method.name not in NOT_MIXING
    return {
        "dataset": cfg.dataset.name,
        "num_classes": cfg.dataset.num_classes,
        "model": cfg.model.name,
        "width": cfg.model.width,
        "bn_init": cfg.model.bn_init,
        "method": cfg.method.name,
        "alpha": cfg.method.alpha if mixes else None,
        "layers": list(cfg.method.layers) if mixes else [],
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
    """Is `key` one of config.RESUME_FREE_KEYS (or below one): a key that cannot change a run's numbers?"""
    from mm_repro.config import RESUME_FREE_KEYS

    return any(key == free or key.startswith(free + ".") for free in RESUME_FREE_KEYS)


def setup_of(config: dict) -> dict[str, Any]:
    """A run's setup: every key of its resolved config that can change its numbers, except the seed and the
    experiment's name. Two runs with the same setup and cell differ only by their seed (normal_setup says what else is
    left out)."""
    return normal_setup({k: v for k, v in sorted(flatten(config).items()) if k not in NOT_SETUP and not is_free(k)})


# Method keys a method that mixes nothing never reads: ERM (or cutout) runs that differ only in them are one run.
UNREAD_WITHOUT_MIXING = ("method.alpha", "method.layers", "method.pairing")


def normal_setup(setup: dict[str, Any]) -> dict[str, Any]:
    """A setup without what cannot change its numbers: a key of config.ADDED_KEYS at its old default, and the mixing
    keys of a method that does not mix (a sweep of ERM over alpha trains one run several times: `tables` then counts
    it once). Applied when result.json is written and when it is read, so older records compare alike."""
    from mm_repro.config import ADDED_KEYS, NOT_MIXING

    unread = UNREAD_WITHOUT_MIXING if setup.get("method.name") in NOT_MIXING else ()
    return {k: v for k, v in setup.items() if k not in unread and not (k in ADDED_KEYS and v == ADDED_KEYS[k])}


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


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return float(value)


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
    if not isinstance(layers, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in layers):
        raise ValueError(f"run.layers is {layers!r}, not a list of integers")
    for part in ("final", "best", "best_valid"):
        if part == "best_valid" and part not in result:
            continue
        if not isinstance(result.get(part), dict):
            raise ValueError(f"'{part}' is missing or not an object")
        for key in ("test_error", "test_nll"):
            _number(result[part].get(key), f"{part}.{key}")
        if "test_top5_error" in result[part]:
            _number(result[part]["test_top5_error"], f"{part}.test_top5_error")
    if "setup" in result and not isinstance(result["setup"], dict):
        raise ValueError("'setup' is not an object")
    planned = result.get("setup", {}).get("train.epochs")
    if planned is not None and result.get("epochs") != planned:
        raise ValueError(
            f"it records {result.get('epochs')!r} epochs of the {planned} its setup trains: not a whole run"
        )


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
