"""Run directories, read and sorted by outcome, for `tables` (and anyone who reads run records).

- complete: result.json (and, for Tables 7 and 9, eval.json from `evaluate`);
- failed or diverged: failure.json (written by the run, or by the sweep for a job that never started);
- incomplete: a checkpoint or metrics but neither of those (still training, or stopped: resume it);
- malformed: a result.json a table cannot use (unreadable, or a field missing or of the wrong type).
Records archived under previous/ by a new start are skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Record:
    """One complete run: result.json and, when `evaluate` ran, eval.json."""

    path: Path
    result: dict
    eval: dict | None = None

    @property
    def run(self) -> dict:
        return self.result["run"]


@dataclass
class Scan:
    """Run directories by outcome; only `records` (complete runs) ever enter a table cell."""

    records: list[Record] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.records)} complete runs, {len(self.incomplete)} incomplete, {len(self.failed)} failed, "
            f"{len(self.diverged)} diverged, {len(self.malformed)} malformed"
        )


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return float(value)


def check_result(result: dict) -> None:
    """Raise ValueError naming the first field of a result.json that a table cannot use."""
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
    for part in ("final", "best"):
        if not isinstance(result.get(part), dict):
            raise ValueError(f"'{part}' is missing or not an object")
        for key in ("test_error", "test_nll"):
            _number(result[part].get(key), f"{part}.{key}")


def _failure(run_dir: Path) -> tuple[str, str]:
    """(status, one line) of a run's failure.json."""
    try:
        record = _read_json(run_dir / "failure.json")
        status = record.get("status") if record.get("status") in ("failed", "diverged") else "failed"
        epoch = f" in epoch {record['epoch']}" if record.get("epoch") else ""
        return status, f"{run_dir}{epoch}: {record.get('message', '?')}"
    except ValueError as exc:
        return "failed", f"{run_dir}: failure.json unreadable ({exc})"


def _run_dirs(paths: list[Path], found: Scan) -> list[Path]:
    run_dirs: set[Path] = set()
    for root in map(Path, paths):
        if not root.exists():
            found.malformed.append(f"{root}: no such directory")
            continue
        for marker in ("result.json", "failure.json", "metrics.jsonl", ".hydra/config.yaml", "checkpoints/last.pt"):
            run_dirs.update(p.parent.parent if "/" in marker else p.parent for p in root.rglob(marker))
    return sorted(d for d in run_dirs if "previous" not in d.parts)  # previous/: records an earlier start archived


def scan(paths: list[Path]) -> Scan:
    """Every run directory below `paths`, sorted by outcome: complete, incomplete, failed, diverged, malformed."""
    found = Scan()
    for run_dir in _run_dirs(paths, found):
        if (run_dir / "failure.json").exists():
            status, line = _failure(run_dir)
            (found.diverged if status == "diverged" else found.failed).append(line)
            continue
        result_path = run_dir / "result.json"
        if not result_path.exists():
            metrics = run_dir / "metrics.jsonl"
            done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
            if done or (run_dir / "checkpoints").exists():
                found.incomplete.append(f"{run_dir} ({done} epochs recorded, no result.json)")
            continue
        try:
            result = _read_json(result_path)
            check_result(result)
        except ValueError as exc:
            found.malformed.append(f"{result_path}: {exc}")
            continue
        evaluation = None
        if (run_dir / "eval.json").exists():
            try:
                evaluation = _read_json(run_dir / "eval.json")
            except ValueError as exc:
                found.malformed.append(f"{run_dir / 'eval.json'}: {exc}")
        found.records.append(Record(run_dir, result, evaluation))
    return found
