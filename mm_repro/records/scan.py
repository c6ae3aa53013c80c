"""Run directories, read and sorted by outcome, for `tables` (and anyone who reads run records).

- complete: result.json (and, for Tables 7 and 9, eval.json from `evaluate`), each run counted once;
- failed or diverged: failure.json (written by the run, or by the sweep for a job that never started);
- incomplete: a checkpoint or metrics but neither of those (still training, or stopped: resume it);
- set apart, with the reason, and never averaged: a result.json that belongs to another checkpoint than the one in
  the directory (stale), a second copy of one run (the same run id: a copied tree, or one directory reached by two
  paths), a repeated seed of one setup (not an independent repeat), and a run whose final error is at chance level
  (unless asked to include it);
- malformed: a record a table cannot use (unreadable, not UTF-8, not JSON, a field missing or of the wrong type, a
  directory where the file should be).
Records archived under previous/ by a new start are skipped. One bad directory never stops a scan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm_repro import records
from mm_repro.records.chance import at_chance
from mm_repro.records.result import normal_setup

# The setup of a result.json written before results recorded their whole setup: the keys it has.
LEGACY_SETUP = {
    "protocol": "protocol.name",
    "epochs": "train.epochs",
    "width": "model.width",
    "bn_init": "model.bn_init",
    "loss": "train.loss",
    "batch_size": "train.batch_size",
    "pairing": "method.pairing",
    "precision": "train.precision",
    "per_class_cap": "dataset.per_class_cap",
}


@dataclass
class Record:
    """One complete run: result.json and, when `evaluate` ran on its checkpoint, eval.json."""

    path: Path
    result: dict
    eval: dict | None = None
    metrics: list[dict] | None = None  # metrics.jsonl's rows, checked against result.json (None: no such file)

    @property
    def run(self) -> dict:
        return self.result["run"]

    @property
    def setup(self) -> dict[str, Any]:
        """What the run was trained with, but its seed (records.setup_of); a legacy result: the keys it holds."""
        if isinstance(self.result.get("setup"), dict):
            return normal_setup(self.result["setup"])
        run = self.run
        legacy = {name: run.get(key) for key, name in LEGACY_SETUP.items() if run.get(key) is not None}
        return {**legacy, "dataset.name": run["dataset"], "model.name": run["model"], "method.name": run["method"]}

    @property
    def data(self) -> dict[str, Any]:
        """The data the run saw, as far as it must be the same within a group: the test split, and the training
        split unless a per-class cap or a validation split draws it with each run's seed (then each seed's subset
        differs by design)."""
        data = self.result.get("data") if isinstance(self.result.get("data"), dict) else {}
        drawn = self.setup.get("dataset.per_class_cap") is not None or bool(self.setup.get("dataset.valid_per_class"))
        return {k: v for k, v in data.items() if k == "test" or (k == "train" and not drawn)}

    @property
    def setup_key(self) -> str:
        """What groups runs: the setup and the data (two copies of a dataset that differ are two groups)."""
        return json.dumps({"setup": self.setup, "data": self.data}, sort_keys=True, default=str)

    def at_chance(self) -> bool:
        return at_chance(self.result)


@dataclass
class Scan:
    """Run directories by outcome; only `records` (complete runs, each counted once) ever enter a table cell."""

    records: list[Record] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    at_chance: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.records)} complete runs"] + [
            f"{len(getattr(self, name))} {label}"
            for name, label in (
                ("incomplete", "incomplete"),
                ("failed", "failed"),
                ("diverged", "diverged"),
                ("at_chance", "at chance"),
                ("repeated", "repeated"),
                ("stale", "stale"),
                ("malformed", "malformed"),
            )
            if getattr(self, name) or name in ("incomplete", "failed", "diverged", "malformed")
        ]
        return ", ".join(parts)

    def apart(self) -> list[tuple[str, list[str]]]:
        """Every list of runs that is not in a table, with its heading."""
        return [
            ("Diverged runs (not results: never averaged into a cell)", self.diverged),
            ("Failed runs (not results)", self.failed),
            ("Runs at chance level (not averaged; tables include_chance=true counts them)", self.at_chance),
            ("Repeated runs (a second copy of a run, or a seed repeated in one setup: counted once)", self.repeated),
            ("Stale results (result.json belongs to another checkpoint than the directory holds)", self.stale),
            ("Incomplete runs (not in the table)", self.incomplete),
            ("Malformed records (skipped)", self.malformed),
        ]


def _failure(run_dir: Path) -> tuple[str, str]:
    """(status, one line) of a run's failure.json."""
    try:
        record = records.read_json(run_dir / records.FAILURE)
        status = record.get("status") if record.get("status") in ("failed", "diverged") else "failed"
        epoch = f" in epoch {record['epoch']}" if record.get("epoch") else ""
        return status, f"{run_dir}{epoch}: {record.get('message', '?')}"
    except ValueError as exc:
        return "failed", f"{run_dir}: failure.json {exc}"


MARKERS = (records.RESULT, records.FAILURE, records.METRICS, ".hydra/config.yaml", str(records.CHECKPOINT))


def _run_dirs(paths: list[Path], found: Scan) -> list[Path]:
    """Every run directory below `paths`, each once however it was reached (resolved paths)."""
    run_dirs: set[Path] = set()
    for root in map(Path, paths):
        if not root.exists():
            found.malformed.append(f"{root}: no such directory")
            continue
        for marker in MARKERS:
            depth = marker.count("/") + 1
            try:
                hits = list(root.rglob(marker))
            except OSError as exc:
                found.malformed.append(f"{root}: cannot be read ({exc.strerror or exc})")
                continue
            for p in hits:
                run_dir = p
                for _ in range(depth):
                    run_dir = run_dir.parent
                run_dirs.add(run_dir.resolve())
    return sorted(d for d in run_dirs if not _archived(d))


def _archived(run_dir: Path) -> bool:
    """Is `run_dir` an earlier attempt's records that a new start moved to <run>/previous/<time>/? (A directory of
    the user's that happens to be named `previous` is not.)"""
    parts = run_dir.parts
    for i in range(1, len(parts) - 1):
        if parts[i] == "previous" and any((Path(*parts[:i]) / m).exists() for m in (*MARKERS, records.LOCK)):
            return True
    return False


def _read_metrics(run_dir: Path, result: dict) -> list[dict] | None:
    """metrics.jsonl's rows, checked against result.json (records.check_metrics); None when the file is absent."""
    path = run_dir / records.METRICS
    if not path.exists():
        return None
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot be read ({exc})") from None
    rows = []
    for i, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {i} is not JSON ({exc.msg})") from None
    return records.check_metrics(rows, result)


def _epochs_recorded(run_dir: Path) -> int:
    """The rows of an unfinished run's metrics.jsonl (0 without one); ValueError when it cannot be read."""
    path = run_dir / records.METRICS
    if not path.exists():
        return 0
    try:
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot be read ({exc})") from None


def _read_record(run_dir: Path, found: Scan) -> Record | None:
    """The complete run in `run_dir`, or None (with the directory listed where it belongs)."""
    try:
        result = records.read_json(run_dir / records.RESULT)
        records.check_result(result)
    except ValueError as exc:
        found.malformed.append(f"{run_dir / records.RESULT}: {exc}")
        return None
    claimed = result.get("checkpoint_sha256")
    checkpoint = run_dir / records.CHECKPOINT
    if claimed and checkpoint.exists():
        try:
            held = records.checkpoint_digest(checkpoint)
        except OSError as exc:
            found.malformed.append(f"{checkpoint}: cannot be read ({exc.strerror or exc})")
            return None
        if held != claimed:
            found.stale.append(
                f"{run_dir}: result.json belongs to checkpoint {claimed[:12]}, the directory holds {held[:12]} "
                "(retrained or replaced since)"
            )
            return None
    try:
        metrics = _read_metrics(run_dir, result)
    except ValueError as exc:
        found.malformed.append(f"{run_dir / records.METRICS}: {exc}")
        return None
    evaluation = None
    if (run_dir / records.EVAL).exists():
        try:
            evaluation = records.read_json(run_dir / records.EVAL)
        except ValueError as exc:
            found.malformed.append(f"{run_dir / records.EVAL}: {exc}")
        if evaluation and claimed and evaluation.get("checkpoint_sha256") not in (None, claimed):
            found.stale.append(f"{run_dir / records.EVAL}: evaluates another checkpoint than result.json's; ignored")
            evaluation = None
    return Record(run_dir, result, evaluation, metrics)


def _count_once(candidates: list[Record], found: Scan) -> list[Record]:
    """Each run once (by its run id), and each seed once per setup; the rest listed as repeated."""
    by_id: dict[str, Record] = {}
    by_seed: dict[tuple[str, Any], Record] = {}
    kept = []
    for record in candidates:  # sorted by path: the first copy counts
        run_id = record.result.get("run_id")
        if run_id and run_id in by_id:
            found.repeated.append(f"{record.path}: the same run (run id {run_id[:12]}) as {by_id[run_id].path}")
            continue
        seed_key = (record.setup_key, record.run.get("seed"))
        if seed_key in by_seed:
            found.repeated.append(
                f"{record.path}: seed {record.run.get('seed')} again, with the setup of {by_seed[seed_key].path}; "
                "not an independent repeat"
            )
            continue
        if run_id:
            by_id[run_id] = record
        by_seed[seed_key] = record
        kept.append(record)
    return kept


def scan(paths: list[Path], include_chance: bool = False) -> Scan:
    """Every run directory below `paths`, sorted by outcome (module docstring)."""
    found = Scan()
    candidates = []
    for run_dir in _run_dirs(paths, found):
        if (run_dir / records.FAILURE).exists():
            status, line = _failure(run_dir)
            (found.diverged if status == "diverged" else found.failed).append(line)
        elif (run_dir / records.RESULT).exists():
            record = _read_record(run_dir, found)
            if record is not None:
                candidates.append(record)
        else:  # every directory a marker found is listed somewhere: here, unfinished or unreadable
            try:
                done = _epochs_recorded(run_dir)
            except ValueError as exc:
                found.malformed.append(f"{run_dir / records.METRICS}: {exc}")
                continue
            found.incomplete.append(f"{run_dir} ({done} epochs recorded, no result.json)")
    for record in _count_once(candidates, found):
        if record.at_chance() and not include_chance:
            found.at_chance.append(
                f"{record.path}: final test error {record.result['final']['test_error']:.2f}% is at chance level"
            )
        else:
            found.records.append(record)
    return found
