"""`python -m mm_repro <command> [hydra overrides]`: one Hydra app per command (mm_repro.commands), its config in
conf/<command>.yaml.

`--help`, `--cfg job` (resolved, so the protocol's values show), `-m` (multirun) and every other Hydra flag work
as in any Hydra app. Bad input (an unknown option, a bad value, missing data, an unreadable checkpoint) is one
line on stderr and exit code 2, never a traceback; a diverged run exits 3, a stop signal 75, anything unexpected 1
(its traceback in the run's train.log); set MM_REPRO_DEBUG=1 for the full traceback on the terminal. A sweep runs
every job, then prints each failed one and exits non-zero (mm_repro.sweeps.jobs).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from mm_repro import console
from mm_repro.commands import COMMANDS, USAGE, Command, command_help, unknown_key_message
from mm_repro.config import CONF_DIR, config_groups, group_options, quoted
from mm_repro.errors import Preempted, UserError, exit_code_of
from mm_repro.sweeps import jobs


def _guarded(command: Command) -> Callable[[Any], None]:
    """The job Hydra runs: a failure is recorded (mm_repro.sweeps.jobs) instead of raised, so that a sweep's other jobs
    still run and Hydra prints no "Error executing job" preamble; main() reports it, one line per job."""

    def job(cfg: Any) -> None:
        hc = HydraConfig.get()
        multirun = hc.mode.name == "MULTIRUN"
        try:
            command.run(cfg)
            if multirun:
                jobs.record_success(hc.job.num, Path(hc.runtime.output_dir))
        except BrokenPipeError:  # the reader closed our output: not the job's failure (__main__ ends quietly)
            raise
        except Exception as exc:
            if os.environ.get("MM_REPRO_DEBUG") == "1":
                raise
            if command.name == "train" or multirun:  # a job of any sweep may run in another process: a note
                num = hc.job.num if multirun else 0
                label = f"job {num} ({' '.join(hc.overrides.task)})"
                jobs.record_failure(exc, Path(hc.runtime.output_dir), multirun, label, num)
            else:
                jobs.FAILED_JOBS.append((console.one_line(exc), exit_code_of(exc)))

    return job


def check_group_choices(args: list[str]) -> None:
    """An unknown `group=option` (also in a sweep list) gets one line listing the options, before Hydra runs."""
    groups = config_groups()
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in groups or value.startswith(("choice(", "range(", "glob(")):
            continue
        options = group_options(key)
        for choice in value.split(","):
            if choice and choice not in options:
                raise UserError(f"{key}={choice!r} is not an option; choose one of: {', '.join(options)}")


PATH_KEYS = ("run", "runs", "hydra.run.dir", "hydra.sweep.dir", "dataset.root", "dataset_root", "out", "bench")
PLAIN_PATH = re.compile(r"[A-Za-z0-9_\-+./\\:~@%$*?|,]*")  # what Hydra's grammar takes unquoted (a comma: a sweep)


def quote_paths(args: list[str]) -> list[str]:
    """Quote a path for Hydra's override grammar where Hydra would not read it as one path: one that holds `=` (the
    run directories `train` makes do: runs/<...>/dataset=cifar10,method=manifold,...), brackets, spaces, quotes or
    letters outside ASCII. So `evaluate run=DIR`, `tables runs=DIR` and `train hydra.run.dir=DIR` take any
    directory as the README writes it. A list (`runs=[a,b]`) and a sweep over plain paths (`a,b`) are left alone."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        plain = PLAIN_PATH.fullmatch(value) and "=" not in value
        is_list = key == "runs" and value.startswith("[")
        if key in PATH_KEYS and sep and value and not plain and not is_list and value[0] not in "'\"":
            arg = f"{key}={quoted(value)}"
        out.append(arg)
    return out


def _restore_handlers(before: list[logging.Handler]) -> None:
    """The root logger's handlers as they were before the command: Hydra's job logging (the run's train.log) is the
    job's, not the process's, so a second command in one process (a notebook, a test) never writes into the first
    one's run directory."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
        handler.close()
    for handler in before:
        if handler not in root.handlers:
            root.addHandler(handler)


def _interrupt_on_sigterm() -> Any:
    """SIGTERM outside training (training stops at a step and checkpoints: training.signals.StopSignals) ends the
    command as Ctrl-C does, so that a launching process that is killed leaves nothing behind; returns the handler it
    replaced (None off the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:
        return None


def _hydra_args(command: str, args: list[str]) -> list[str]:
    """The arguments Hydra gets: a plan is of a sweep (of one job without -m's lists); `--cfg job` resolved, so the
    protocol's values show rather than ${protocol...} interpolations."""
    if command == "plan" and not {"-m", "--multirun"} & set(args):
        args = ["-m", *args]
    asks_job = (
        any(a in ("--cfg", "-c") and b == "job" for a, b in zip(args, args[1:], strict=False)) or "--cfg=job" in args
    )
    return [*args, "--resolve"] if asks_job and "--resolve" not in args else args


def _refused(command: str, exc: BaseException) -> int:
    """The one line of a command refused as a whole, and its exit code."""
    jobs.undo_sweep_start()
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, UserError):
        cause = cause.__cause__
    message = console.error_line(cause or exc)  # ours, as Hydra raised it wrapped (a launcher's refused option)
    unknown = re.search(r"Could not override '([\w.]+)'", message)
    if unknown:  # Hydra's advice (+key=...) would add the misspelt key; name the keys it may have meant
        message = unknown_key_message(command, unknown.group(1))
    console.error(message)
    return UserError.exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help", "help"):
            console.stderr(f"unknown command {argv[0]!r}")
        sys.stderr.write(USAGE)
        return 0 if argv and argv[0] in ("-h", "--help", "help") else 2
    command, args = COMMANDS[argv[0]], quote_paths(argv[1:])
    if command.name != "train" and any(a in ("-h", "--help") for a in args):  # train's help is Hydra's
        print(command_help(command.name))
        return 0
    jobs.FAILED_JOBS.clear()  # main() may be called more than once in one process (tests, a notebook)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us, so that they become one line
    sys.argv = [f"mm_repro {command.name}", *_hydra_args(command.name, args)]
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=command.name)(_guarded(command))
    previous, handlers = _interrupt_on_sigterm(), list(logging.getLogger().handlers)
    try:
        check_group_choices(args)
        app()
        if command.closing:
            command.closing()
    except Preempted as exc:
        console.stderr(str(exc))
        return exc.exit_code
    except BrokenPipeError:
        raise
    except (UserError, HydraException, OmegaConfBaseException, OSError, ValueError) as exc:
        if os.environ.get("MM_REPRO_DEBUG") == "1":
            raise
        return _refused(command.name, exc)
    except KeyboardInterrupt:
        jobs.undo_sweep_start(interrupted=True)
        console.stderr("interrupted")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _restore_handlers(handlers)
    for line, _ in jobs.FAILED_JOBS:
        console.error(line)
    if len(jobs.FAILED_JOBS) > 1:
        console.stderr(f"{len(jobs.FAILED_JOBS)} jobs failed")
    codes = {code for _, code in jobs.FAILED_JOBS}
    return (codes.pop() if len(codes) == 1 else 1) if codes else 0
