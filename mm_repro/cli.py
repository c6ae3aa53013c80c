"""`python -m mm_repro <command> [hydra overrides]`: one Hydra app per command, configs in conf/<command>.yaml.

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

COMMANDS: dict[str, str] = {
    "train": "train a model (ERM, input mixup or manifold mixup); -m for sweeps",
    "tables": "regenerate the paper's tables from run records: runs=DIR out=DIR",
    "evaluate": "FGSM, PGD, k-NN, novel deformations, calibration and flattening of a trained run: run=DIR",
    "spiral": "the paper's Figure 1: 2-D spirals, ERM against manifold mixup at a 2-D bottleneck: out=DIR",
    "plan": "a train sweep's jobs, packs and estimated GPU-hours (from bench figures), without training: bench=DIR",
    "bench": "time our training step and epoch against the official pipeline: device=cpu|cuda out=DIR",
    "flattening": "the paper's MNIST flattening studies: study=section3_2|figure5|appendix_g out=DIR",
    "synthetic": "Table 8 and Figure 4: mixing in the true generative factors: task=A|B|C out=DIR",
}

USAGE = "usage: python -m mm_repro <command> [hydra overrides]\n\ncommands:\n" + "".join(
    f"  {name:<9} {text}\n" for name, text in COMMANDS.items()
)


def _train_task(cfg) -> None:  # noqa: ANN001 (a DictConfig; typed at validation)
    from hydra.core.hydra_config import HydraConfig

    from mm_repro.sweeps.jobs import job_from_hydra, label_console, share_threads, sweep_group
    from mm_repro.training import loop

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode.name == "MULTIRUN"
    sweep = dict(hydra_cfg.sweeper.get("params") or {})
    if sweep and not multirun:  # without -m Hydra would train one cell of the table under the table's name
        from mm_repro.errors import UserError

        experiment = hydra_cfg.runtime.choices.get("experiment")
        raise UserError(
            f"experiment={experiment} is a sweep ({', '.join(f'{k}: {v}' for k, v in sweep.items())}); run it with "
            f"-m: python -m mm_repro train -m experiment={experiment}"
        )
    share_threads(hydra_cfg)
    label_console(hydra_cfg)
    group = sweep_group(hydra_cfg.sweep.dir) if multirun else None
    job = job_from_hydra(cfg, HydraConfig.instance().cfg, Path(hydra_cfg.runtime.output_dir), group)
    loop.run(job.cfg, job.run_dir, job.config, job.group, hydra_cfg.job.num if multirun else None, job.hydra_files)


def _tables_task(cfg) -> None:  # noqa: ANN001
    from mm_repro.config import TablesConfig, as_list, to_schema
    from mm_repro.records.tracking import open_tracker
    from mm_repro.reports.tables import make_tables

    tcfg: TablesConfig = to_schema(cfg, TablesConfig)
    out = Path(tcfg.out)
    paths = [Path(p) for p in as_list(tcfg.runs)]
    report = as_list(tcfg.report) or None
    made = make_tables(paths, out, as_list(tcfg.tables) or None, tcfg.figures, tcfg.include_chance, report)
    for markdown, _ in made["tables"].values():
        print(markdown)
    if made["unmatched"]:
        print(f"{len(made['unmatched'])} complete run(s) fit no paper table: see {out / 'summary.md'}")
    print(f"{made['scan'].summary()}; tables written to {out}/ (summary.md: every run, by setup)")
    for line in made["scan"].malformed:
        sys.stderr.write(f"warning: skipped {line}\n")
    tracker = open_tracker(tcfg.logger, out, {"runs": as_list(tcfg.runs)}, name="tables", group="tables")
    try:
        for name, (_, rows) in made["tables"].items():
            tracker.log_table(name, list(rows[0]), [list(r.values()) for r in rows])
    finally:
        tracker.finish()


def _bench_task(cfg) -> None:  # noqa: ANN001
    from mm_repro.bench.command import main

    main(cfg)


def _evaluate_task(cfg) -> None:  # noqa: ANN001
    from mm_repro.config import EvalConfig, to_schema
    from mm_repro.errors import UserError
    from mm_repro.evaluation.evaluate import evaluate_run
    from mm_repro.evaluation.report import summary

    if cfg.get("run") is None:
        raise UserError("evaluate needs run=DIR, a training run directory (with .hydra/ and checkpoints/)")
    out = evaluate_run(to_schema(cfg, EvalConfig))
    print(summary(out))
    print(f"written: {out['written']}")


def _spiral_task(cfg) -> None:  # noqa: ANN001
    from mm_repro.config import SpiralConfig, to_schema
    from mm_repro.experiments.spiral import run_spiral

    result = run_spiral(to_schema(cfg, SpiralConfig))
    for name, r in result["results"].items():
        print(
            f"{name:<15} test acc {r['test_accuracy']:6.2f} %  boundary changes/line "
            f"{r['boundary_changes_per_grid_line']:6.2f}  hidden low-confidence "
            f"{100 * r['hidden_low_confidence_fraction']:5.1f} %"
        )
    print("paper's claims hold here:", ", ".join(f"{k}={v}" for k, v in result["claims"].items()))
    print(f"written: {Path(cfg.out) / result['file']} and {', '.join(result['figures'])}")


def _flattening_task(cfg) -> None:  # noqa: ANN001
    from mm_repro.config import StudyConfig, to_schema
    from mm_repro.experiments.flattening import run_study

    report = run_study(to_schema(cfg, StudyConfig))
    if report["generated_data"]:
        print("generated data (random images of MNIST's shape): a timing run, not a result")
    for row in report["rows"]:
        print(
            f"{row['setup']:<36} {row['method']:<15} acc {row['test accuracy (%)']:>6} %  top "
            f"{row['ours: top singular value']:>8} (paper {row['paper: top']})  "
            f"others {row['ours: sum of the others']:>8}"
        )
    out = Path(cfg.out)
    print(f"written: {out / ('flattening_' + cfg.study + '.md')} and {', '.join(report['figures'])}")


def _synthetic_task(cfg) -> None:  # noqa: ANN001
    from mm_repro.config import SyntheticConfig, to_schema
    from mm_repro.experiments.synthetic import run_synthetic

    report = run_synthetic(to_schema(cfg, SyntheticConfig))
    for row in report["rows"]:
        print(
            f"task {row['task']} {row['model']:<32} accuracy {row['ours: test accuracy (%)']:>6} % "
            f"(paper {row['paper: test accuracy (%)']})  NLL {row['ours: test NLL']} (paper {row['paper: test NLL']})"
        )
    print(f"written: {Path(cfg.out) / ('table8_task' + cfg.task + '.md')} and {', '.join(report['figures'])}")


TASKS: dict[str, Callable] = {
    "synthetic": _synthetic_task,
    "flattening": _flattening_task,
    "spiral": _spiral_task,
    "train": _train_task,
    "plan": _train_task,  # never called: the plan sweeper (conf/plan.yaml) launches nothing
    "tables": _tables_task,
    "evaluate": _evaluate_task,
    "bench": _bench_task,
}


def _guarded(command: str, task: Callable) -> Callable:
    """The job Hydra runs: a failure is recorded (mm_repro.jobs.jobs) instead of raised, so that a sweep's other jobs
    still run and Hydra prints no "Error executing job" preamble; main() reports it, one line per job."""

    def job(cfg) -> None:  # noqa: ANN001
        from hydra.core.hydra_config import HydraConfig

        from mm_repro.sweeps import jobs

        try:
            task(cfg)
            hc = HydraConfig.get()
            if hc.mode.name == "MULTIRUN":
                jobs.record_success(hc.job.num, Path(hc.runtime.output_dir))
        except Exception as exc:
            if os.environ.get("MM_REPRO_DEBUG") == "1":
                raise
            hc = HydraConfig.get()
            multirun = hc.mode.name == "MULTIRUN"
            if command == "train":
                num = hc.job.num if multirun else 0
                label = f"job {num} ({' '.join(hc.overrides.task)})"
                jobs.record_failure(exc, Path(hc.runtime.output_dir), multirun, label, num)
            else:
                jobs.FAILED_JOBS.append((jobs.one_line(exc), jobs.exit_code_of(exc)))

    return job


def check_group_choices(args: list[str]) -> None:
    """An unknown `group=option` (also in a sweep list) gets one line listing the options, before Hydra runs."""
    from mm_repro.config import config_groups, group_options
    from mm_repro.errors import UserError

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
            arg = f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        out.append(arg)
    return out


# Hydra launchers that are extras of mm_repro (pyproject.toml): the config Hydra cannot find when one is missing.
LAUNCHER_EXTRAS = {
    "hydra/launcher/joblib": ("local", "hydra-joblib-launcher"),
    "hydra/launcher/submitit_slurm": ("slurm", "hydra-submitit-launcher"),
    "hydra/launcher/submitit_local": ("slurm", "hydra-submitit-launcher"),
}


def error_line(exc: BaseException) -> str:
    """The one line a refused command prints: a missing launcher plugin names the extra that installs it (Hydra
    reports it as a config it cannot find, an IOError without a file name); an OSError names the file."""
    from hydra.errors import MissingConfigException

    from mm_repro.sweeps.jobs import one_line

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file in LAUNCHER_EXTRAS:
        extra, package = LAUNCHER_EXTRAS[exc.missing_cfg_file]
        launcher = "local" if extra == "local" else "slurm (or packed_slurm)"
        return (
            f"hydra/launcher={launcher} needs Hydra's {package} plugin, which is not installed: "
            f'pip install "mm_repro[{extra}]" (or pip install {package})'
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"cannot write {exc.filename}: {exc.strerror}"
    return one_line(exc)


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


def _sweep_exit_code(codes: list[int]) -> int:
    return codes[0] if len(set(codes)) == 1 else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help") or argv[0] not in TASKS:
        if argv and argv[0] not in ("-h", "--help", "help"):
            sys.stderr.write(f"unknown command {argv[0]!r}\n")
        sys.stderr.write(USAGE)
        return 0 if argv and argv[0] in ("-h", "--help", "help") else 2
    command, args = argv[0], quote_paths(argv[1:])
    if command == "plan" and not {"-m", "--multirun"} & set(args):
        args.insert(0, "-m")  # a plan is of a sweep (of one job, without -m's lists)
    if command != "train" and any(a in ("-h", "--help") for a in args):  # train's help is Hydra's (conf/hydra/help)
        from mm_repro.keys import command_help

        print(command_help(command))
        return 0
    asks_job = (
        any(a in ("--cfg", "-c") and b == "job" for a, b in zip(args, args[1:], strict=False)) or "--cfg=job" in args
    )
    if asks_job and "--resolve" not in args:  # show the protocol's values, not ${protocol...} interpolations
        args.append("--resolve")

    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mm_repro.config import CONF_DIR
    from mm_repro.errors import Preempted, UserError
    from mm_repro.sweeps.jobs import FAILED_JOBS, undo_sweep_start

    debug = os.environ.get("MM_REPRO_DEBUG") == "1"
    FAILED_JOBS.clear()  # main() may be called more than once in one process (tests, a notebook)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us, so that they become one line
    sys.argv = [f"mm_repro {command}", *args]
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=command)(
        _guarded(command, TASKS[command])
    )
    previous = _interrupt_on_sigterm()
    handlers = list(logging.getLogger().handlers)
    try:
        check_group_choices(args)
        app()
    except Preempted as exc:
        sys.stderr.write(f"{exc}\n")
        return exc.exit_code
    except (UserError, HydraException, OmegaConfBaseException, OSError, ValueError) as exc:
        if debug:
            raise
        undo_sweep_start()
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        exc = cause or exc  # ours, as Hydra raised it wrapped (a launcher's refused option)
        message = error_line(exc)
        unknown = re.search(r"Could not override '([\w.]+)'", message)
        if unknown:  # Hydra's advice (+key=...) would add the misspelt key; name the keys it may have meant
            from mm_repro.keys import unknown_key_message

            message = unknown_key_message(command, unknown.group(1))
        sys.stderr.write(f"error: {message}\n")
        return UserError.exit_code
    except KeyboardInterrupt:
        undo_sweep_start(interrupted=True)
        sys.stderr.write("interrupted\n")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _restore_handlers(handlers)
    for line, _ in FAILED_JOBS:
        sys.stderr.write(f"error: {line}\n")
    if len(FAILED_JOBS) > 1:
        sys.stderr.write(f"{len(FAILED_JOBS)} jobs failed\n")
    return _sweep_exit_code([code for _, code in FAILED_JOBS]) if FAILED_JOBS else 0
