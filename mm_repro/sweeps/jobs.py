"""What a training job needs from Hydra, and how a sweep's failed jobs are reported, whatever the launcher.

`job_from_hydra` turns a composed config into a `Job`: checked, its experiment name taken from Hydra's runtime choice
(never typed by hand), and the files Hydra would have written into `.hydra/` (train.yaml turns Hydra's own writing off,
so that a refused start leaves an existing run directory untouched; training.ownership.take_over writes them once the
run is taken over).

A failed job (bad input, a crash, a diverged run) writes its one-line error into its own train.log and, when its run
directory holds no other run, a failure record there (failure.json), which `tables` lists. Jobs may run in other
processes (joblib) or on other machines (SLURM), so each also drops a note into `<sweep dir>/.failures/<id>/`, a
directory the parent process opens at the sweep's start (`FailureReport.on_multirun_start`, passed on through the
environment) and reads at its end; the parent then prints every failed job and exits non-zero.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from mm_repro import records
from mm_repro.console import one_line
from mm_repro.errors import UserError, exit_code_of
from mm_repro.training.checks import validate_train
from mm_repro.training.run import Job

FAILURES_ENV = "MM_REPRO_SWEEP_FAILURES"
FAILED_JOBS: list[tuple[str, int]] = []  # (line, exit code) of the jobs that failed, reported by cli.main
DONE_RUNS: list[Path] = []  # the run directories a train sweep completed, for its closing summary
STARTED: list[Path] = []  # the failure notes' directory of the sweep now running, and the topmost one it made


def job_from_hydra(task_cfg: DictConfig, hydra_cfg: DictConfig, run_dir: Path, group: str | None) -> Any:
    """The Job a composed config describes (validated; experiment from Hydra's choices; `.hydra/` files)."""
    task_cfg = OmegaConf.create(OmegaConf.to_container(task_cfg))
    with open_dict(task_cfg):
        task_cfg.experiment = hydra_cfg.hydra.runtime.choices.get("experiment")
    cfg = validate_train(task_cfg)
    hydra_files = {
        "config.yaml": task_cfg,
        "hydra.yaml": hydra_cfg,
        "overrides.yaml": OmegaConf.create(list(hydra_cfg.hydra.overrides.task)),
    }
    config = OmegaConf.to_container(task_cfg, resolve=True)
    return Job(cfg, Path(run_dir), config, group, hydra_files)


def label_console(hydra_cfg: Any) -> bool:
    """Jobs of the local launcher print side by side: each console line of a job then starts with `[job N]`, as a
    packed run's do (train.log keeps the plain lines). Returns whether it labelled."""
    if "joblib" not in str(hydra_cfg.launcher.get("_target_", "")):
        return False
    prefix = logging.Formatter(f"[job {hydra_cfg.job.num}] %(message)s")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setFormatter(prefix)
    return True


def share_threads(hydra_cfg: Any) -> int | None:
    """Jobs of the local launcher run `n_jobs` at a time on one machine; with torch's default (every core each) they
    fight over the cores, and small CPU jobs ran 2-11x slower. Each job then takes its share of the cores; a SLURM job
    (slurm or packed_slurm) takes the cores SLURM gave it (SLURM_CPUS_PER_TASK), not the node's. OMP_NUM_THREADS, when
    set, wins. Returns the thread count set (None: left as it was)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    n_jobs = hydra_cfg.launcher.get("n_jobs") if "joblib" in str(hydra_cfg.launcher.get("_target_", "")) else None
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        threads = max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    elif n_jobs:
        threads = max(1, (os.cpu_count() or 1) // int(n_jobs))
    else:
        return None
    torch.set_num_threads(threads)
    return threads


def sweep_group(sweep_dir: str) -> str:
    """The W&B group of a sweep's jobs: the sweep's overrides, which Hydra writes to multirun.yaml before it launches
    any job (each job's own overrides differ, so they can't name the group)."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.exists():
        return "sweep"
    return " ".join(OmegaConf.load(path).hydra.overrides.task)[:120] or "sweep"


def _append_to_log(run_dir: Path, text: str) -> None:
    if run_dir.is_dir():
        with open(run_dir / records.TRAIN_LOG, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")


def _only_start_files(run_dir: Path) -> bool:
    return run_dir.is_dir() and all(p.name in (records.LOCK, ".hydra", records.TRAIN_LOG) for p in run_dir.iterdir())


def _remove_empty_start(run_dir: Path) -> None:
    """A single run that failed before training leaves no directory behind (nor the empty parents Hydra made)."""
    if not _only_start_files(run_dir):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    parent = run_dir.resolve().parent
    while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def record_failure(exc: BaseException, run_dir: Path, multirun: bool, job: str, num: int = 0) -> tuple[str, int]:
    """Record a failed training job where it belongs; returns (one line, exit code)."""
    message, code = one_line(exc), exit_code_of(exc)
    in_use = records.RunLock(run_dir).holder() is not None
    if getattr(exc, "recorded", False):  # the run's own failure.json is written; keep the traceback beside it
        _append_to_log(run_dir, "".join(traceback.format_exception(exc)))
    elif not in_use and not records.holds_a_run(run_dir):
        if multirun:
            _append_to_log(run_dir, f"error: {message}")
            records.write_failure(run_dir, "failed", message, exit_code=code)
        else:
            _remove_empty_start(run_dir)
    if multirun and _notes_open():
        note = Path(os.environ[FAILURES_ENV]) / f"{uuid.uuid4().hex}.json"
        records.write_json(note, {"num": num, "job": job, "message": message, "exit_code": code})
    elif not multirun:
        FAILED_JOBS.append((message, code))
    return message, code


def _notes_open() -> bool:
    """Is the sweep's notes directory there to write into? (It is gone once the launching process was stopped; a
    job still running on a cluster node then writes no note that nobody would read.)"""
    return bool(os.environ.get(FAILURES_ENV)) and Path(os.environ[FAILURES_ENV]).is_dir()


def record_success(num: int, run_dir: Path | None = None) -> None:
    """A sweep job that ran (so the sweep was not refused as a whole), and its run directory; see FailureReport."""
    if _notes_open():
        note = {"num": num, "run_dir": str(Path(run_dir).resolve()) if run_dir else None}
        records.write_json(Path(os.environ[FAILURES_ENV]) / f"ok-{uuid.uuid4().hex}.json", note)


def undo_sweep_start(interrupted: bool = False) -> None:
    """A sweep refused before any job ran (a bad launcher option: Hydra instantiates the launcher after the sweep's
    start; a submission the cluster refused) leaves neither its failure notes' directory, nor the directories that
    start made, nor a new multirun.yaml (the earlier one is put back). A sweep `interrupted` while its jobs ran (a
    signal to the launching process) leaves no notes' directory either: its jobs' notes are not read by anyone."""
    if not STARTED:
        return
    path, made, (multirun_yaml, before) = STARTED
    STARTED.clear()
    os.environ.pop(FAILURES_ENV, None)
    if interrupted:
        shutil.rmtree(path, ignore_errors=True)
    elif multirun_yaml is not None:
        if before is None:
            multirun_yaml.unlink(missing_ok=True)
        else:
            records.atomic_write(multirun_yaml, before)
    while path.is_dir() and not any(path.iterdir()) or not path.exists():  # the empty directories the start made
        if path.exists():
            path.rmdir()
        if path == made or not path.parent.is_dir() or any(path.parent.iterdir()):
            break
        path = path.parent


def keep_sweep_record(sweep_dir: Path) -> None:
    """Hydra writes each sweep's multirun.yaml over the last one in the sweep directory (every sweep into `runs`
    shares it): a copy of it is kept as sweeps/<time>-<pid>.yaml, one per sweep."""
    latest = sweep_dir / "multirun.yaml"
    if latest.is_file():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        records.atomic_write(sweep_dir / "sweeps" / f"{stamp}-{os.getpid()}.yaml", latest.read_bytes())


class FailureReport(Callback):
    """Hydra callback (conf/train.yaml): opens the sweep's failure notes at its start, reports them at its end. A
    sweep whose every job was refused (bad input, exit 2: nothing trained) leaves the sweep directory's earlier
    multirun.yaml as it was (Hydra writes the new one before it launches any job)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if str(config.hydra.job.name) == "plan":  # `plan` launches nothing and writes nothing
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        path = sweep_dir / ".failures" / uuid.uuid4().hex
        made = path
        while not made.parent.exists():
            made = made.parent
        path.mkdir(parents=True, exist_ok=True)
        os.environ[FAILURES_ENV] = str(path.resolve())
        earlier = sweep_dir / "multirun.yaml"
        self.earlier = (earlier, earlier.read_bytes() if earlier.is_file() else None)
        STARTED[:] = [path, made, self.earlier]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        STARTED.clear()
        path = Path(os.environ.pop(FAILURES_ENV, ""))
        if not path.name or not path.is_dir():
            return
        notes = [json.loads(p.read_text()) for p in path.glob("*.json") if not p.name.startswith("ok-")]
        refused = (
            notes and not list(path.glob("ok-*.json")) and all(n["exit_code"] == UserError.exit_code for n in notes)
        )
        multirun_yaml, before = getattr(self, "earlier", (None, None))
        if refused and multirun_yaml is not None:
            if before is None:
                multirun_yaml.unlink(missing_ok=True)
            else:
                records.atomic_write(multirun_yaml, before)
        elif str(config.hydra.job.name) != "plan":
            keep_sweep_record(Path(str(config.hydra.sweep.dir)))
        for note in sorted(notes, key=lambda n: n["num"]):
            FAILED_JOBS.append((f"{note['job']}: {note['message']}", note["exit_code"]))
        done = [json.loads(p.read_text()).get("run_dir") for p in path.glob("ok-*.json")]
        if str(config.hydra.job.name) == "train":  # the command prints their summary (commands.train)
            DONE_RUNS[:] = sorted({Path(d) for d in done if d})
        shutil.rmtree(path, ignore_errors=True)
        if path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()
