"""A study's runs launched together, through the launchers `train -m` uses: the nets of a `flattening` study and the
classifiers of a `synthetic` task are one Hydra sweep, `python -m mm_repro <command> -m hydra/sweeper=listed`
(hydra_plugins/mm_repro_launchers/listed_sweeper.py), whose jobs are written to `<sweep dir>/jobs.yaml`.

`launcher` picks Hydra's launcher: `local` (the joblib launcher: `workers` jobs at a time, one per core by default,
each on its share of the cores, sweeps.jobs.share_threads), `slurm` (the submitit launcher: each job a SLURM job of
one CPU; `launcher_options` sets its options, such as `launcher_options={partition:cpu}`) or `basic` (one job after
another in one process). A job trained in parallel is the job trained alone at the same thread count (each is an
ordinary run with its own seeded streams; tests/test_study.py compares them bitwise).

The launching process waits with one progress line (jobs done, running and left, time left) and keeps the sweep's own
output in `<sweep dir>/sweep.log`. A job that failed is named in one line with its directory; the others finish and
are kept. A stop signal (Ctrl-C, SIGTERM) reaches every job, which checkpoints and stops; rerunning the command
resumes them, and finished jobs are reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from mm_repro import console, records
from mm_repro.config import quoted
from mm_repro.console import progress
from mm_repro.errors import Preempted, RunFailed, UserError

# A study's SLURM job is one CPU job; `launcher_options` changes any of these (and adds the partition).
SLURM_DEFAULTS = ["hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=4"]


@dataclass(frozen=True)
class StudyJob:
    """One run of a study: how the study names it, its directory, the command's overrides that make it (values in
    Hydra's grammar), and the file that says it finished."""

    label: str
    run_dir: Path
    overrides: list[str]
    done_file: str = records.RESULT

    @property
    def done(self) -> bool:
        return (self.run_dir / self.done_file).is_file()


@dataclass(frozen=True)
class Launch:
    """How a study's jobs run: the launcher, the jobs at a time (None: one per core) and extra launcher overrides."""

    launcher: str = "local"
    workers: int | None = None
    overrides: tuple[str, ...] = ()

    @property
    def jobs_at_a_time(self) -> int:
        return self.workers or os.cpu_count() or 1

    def hydra_args(self) -> list[str]:
        if self.launcher == "local":
            args = ["hydra/launcher=local", f"hydra.launcher.n_jobs={self.jobs_at_a_time}"]
        elif self.launcher == "slurm":
            args = ["hydra/launcher=slurm", *SLURM_DEFAULTS, f"hydra.launcher.array_parallelism={self.jobs_at_a_time}"]
        else:
            args = []
        return [*args, *self.overrides]

    def describe(self) -> str:
        """How the jobs ran, for a report."""
        threads = os.environ.get("OMP_NUM_THREADS")
        if self.launcher == "local":
            each = threads or str(max(1, (os.cpu_count() or 1) // self.jobs_at_a_time))
            return f"{self.jobs_at_a_time} at a time (Hydra's joblib launcher), {each} thread(s) each"
        if self.launcher == "slurm":
            return "as SLURM jobs (Hydra's submitit launcher), one CPU each"
        return f"one after another in one process, {threads or 'every core'} thread(s)"


def launcher_overrides(options: dict | None) -> list[str]:
    """A study's `launcher_options` ({partition: cpu, mem_gb: 2}) as Hydra overrides of hydra.launcher.<key>."""
    out = []
    for key, value in (options or {}).items():
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        out.append(f"hydra.launcher.{key}={text if PLAIN.fullmatch(text) else quoted(text)}")
    return out


PLAIN = re.compile(r"[A-Za-z0-9_\-+./:]*")  # a value Hydra's grammar reads as itself


def read_jobs(path: str | Path) -> list[list[str]]:
    """The job list a listed sweep launches (written by `launch`)."""
    jobs = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(jobs, list) or not all(isinstance(j, list) for j in jobs):
        raise UserError(f"hydra.sweeper.jobs={path} must hold a list of jobs, each a list of overrides")
    return [[str(o) for o in job] for job in jobs]


def launch(command: str, jobs: list[StudyJob], sweep_dir: Path, how: Launch, desc: str, total: int) -> list[str]:
    """Run `jobs` (of `total` in the study; the others were done before) as one sweep; the one-line failures."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    jobs_file = sweep_dir / "jobs.yaml"
    subdirs = [[*job.overrides, f"hydra.sweep.subdir={job.run_dir.relative_to(sweep_dir)}"] for job in jobs]
    records.atomic_write(jobs_file, OmegaConf.to_yaml(OmegaConf.create(subdirs)).encode())
    args = [sys.executable, "-m", "mm_repro", command, "-m", "hydra/sweeper=listed", f"hydra.sweeper.jobs={jobs_file}",
            f"hydra.sweep.dir={sweep_dir}", *how.hydra_args()]  # fmt: skip
    log = sweep_dir / "sweep.log"
    with open(log, "ab") as out:
        start = out.tell()
        out.write(f"\n$ {' '.join(args)}\n".encode())
        out.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        _wait(proc, jobs, desc, total)
    with open(log, "rb") as f:
        f.seek(start)
        said = _job_errors(f.read().decode("utf-8", "replace"))
    failures = [_failure(i, job, said, log) for i, job in enumerate(jobs) if not job.done]
    if proc.returncode not in (0, 1, 2, 3) and not failures:  # the sweep itself failed (a bad launcher option)
        failures.append(f"the sweep failed (exit {proc.returncode}); its output is in {log}")
    return failures


def _job_errors(text: str) -> dict[int, str]:
    """The one-line errors a sweep printed for its jobs (`error: job N (overrides): message`), by job number."""
    said = {}
    for line in text.splitlines():
        if line.startswith("error: job ") and "): " in line:
            number = line.removeprefix("error: job ").split(" ", 1)[0]
            if number.isdigit():
                said[int(number)] = line.split("): ", 1)[1]
    return said


def _wait(proc: subprocess.Popen, jobs: list[StudyJob], desc: str, total: int) -> None:
    """Until the sweep ends: one progress line; a stop signal is passed on to every job of the sweep."""
    bar = progress(total=total, desc=desc, unit="job", initial=total - len(jobs))
    try:
        while proc.poll() is None:
            done = sum(job.done for job in jobs)
            running = sum(job.run_dir.is_dir() and not job.done for job in jobs)
            bar.update(total - len(jobs) + done - bar.n)
            bar.set_postfix_str(f"{running} running, {len(jobs) - done - running} waiting")
            time.sleep(1.0)
        bar.update(total - len(jobs) + sum(job.done for job in jobs) - bar.n)
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # every job checkpoints at its step and stops
        proc.wait()
        raise Preempted(
            f"{desc}: stopped; each unfinished job wrote its checkpoint. Rerun the same command to resume"
        ) from None
    finally:
        bar.close()


def _failure(number: int, job: StudyJob, said: dict[int, str], log: Path) -> str:
    """One line for a job that did not finish: what the sweep said of it (or its failure record), and where."""
    message = said.get(number)
    failure = job.run_dir / records.FAILURE
    if message is None and failure.is_file():
        with contextlib.suppress(ValueError, OSError):
            message = str(records.read_json(failure).get("message"))
    if message is None:
        message = f"did not run to its end: the sweep stopped (its output: {log})"
    return f"{job.label}: {message} ({job.run_dir})"


def failed(what: str, failures: list[str], finished: int) -> RunFailed:
    """Each failed job in its own line (on stderr, now), and the error the study ends with: the others are kept."""
    for line in failures:
        console.error(line)
    return RunFailed(
        f"{len(failures)} of the {what} failed (above); the {finished} that finished are kept, and rerunning the same "
        "command runs only the others"
    )
