"""`python -m mm_repro <command> [hydra overrides]`: one Hydra app per command, configs in conf/<command>.yaml.

`--help`, `--cfg job` (resolved, so the protocol's values show), `-m` (multirun) and every other Hydra flag work
as in any Hydra app. Bad input (an unknown option, a bad value, missing data, an unreadable checkpoint) is one
line on stderr and exit code 2, never a traceback; set MM_REPRO_DEBUG=1 for the full traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

COMMANDS: dict[str, str] = {
    "train": "train a model (ERM, input mixup or manifold mixup); -m for sweeps",
    "tables": "regenerate the paper's tables from run records: runs=DIR out=DIR",
    "evaluate": "FGSM, novel deformations, calibration and flattening of a trained run: run=DIR",
    "spiral": "the paper's Figure 1: 2-D spirals, ERM against manifold mixup at a 2-D bottleneck: out=DIR",
    "bench": "time our training step against the official pipeline: device=cpu|cuda out=DIR",
}

USAGE = "usage: python -m mm_repro <command> [hydra overrides]\n\ncommands:\n" + "".join(
    f"  {name:<9} {text}\n" for name, text in COMMANDS.items()
)


def _train_task(cfg) -> None:  # noqa: ANN001 (a DictConfig; typed at validation)
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from mm_repro import train
    from mm_repro.config import validate_train

    run_cfg = validate_train(cfg)
    hydra_cfg = HydraConfig.get()
    group, job_num = None, None
    if hydra_cfg.mode.name == "MULTIRUN":
        job_num = hydra_cfg.job.num
        # The jobs of one sweep share a W&B group named after the sweep's overrides, which Hydra writes to
        # multirun.yaml before it launches any job (each job's own overrides differ, so they can't name the group).
        sweep = OmegaConf.load(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
        group = " ".join(sweep.hydra.overrides.task)[:120] or "sweep"
    config = OmegaConf.to_container(cfg, resolve=True)
    train.run(run_cfg, Path(hydra_cfg.runtime.output_dir), config, group=group, job_num=job_num)


def _tables_task(cfg) -> None:  # noqa: ANN001
    from mm_repro.config import TablesConfig, as_list, to_schema
    from mm_repro.tables import make_tables
    from mm_repro.tracking import open_tracker

    tcfg: TablesConfig = to_schema(cfg, TablesConfig)
    out = Path(tcfg.out)
    made = make_tables([Path(p) for p in as_list(tcfg.runs)], out, as_list(tcfg.tables) or None, tcfg.figures)
    for markdown, _ in made["tables"].values():
        print(markdown)
    scanned = made["scan"]
    print(
        f"{len(scanned.records)} complete runs, {len(scanned.incomplete)} incomplete, "
        f"{len(scanned.malformed)} malformed; tables written to {out}/"
    )
    for line in scanned.malformed:
        sys.stderr.write(f"warning: skipped {line}\n")
    tracker = open_tracker(tcfg.logger, out, {"runs": as_list(tcfg.runs)}, name="tables", group="tables")
    try:
        for name, (_, rows) in made["tables"].items():
            tracker.log_table(name, list(rows[0]), [list(r.values()) for r in rows])
    finally:
        tracker.finish()


def _bench_task(cfg) -> None:  # noqa: ANN001
    from mm_repro.bench import BenchConfig, main
    from mm_repro.config import COMPILE_MODES, PRECISIONS, choose, to_schema

    bcfg: BenchConfig = to_schema(cfg, BenchConfig)
    choose("device", bcfg.device, ("cpu", "cuda"))
    choose("precision", bcfg.precision, PRECISIONS)
    choose("compile_mode", bcfg.compile_mode, COMPILE_MODES)
    main(bcfg)


def _evaluate_task(cfg) -> None:  # noqa: ANN001
    from mm_repro.config import to_schema
    from mm_repro.errors import UserError
    from mm_repro.evaluate import EvalConfig, evaluate_run, summary

    if cfg.get("run") is None:
        raise UserError("evaluate needs run=DIR, a training run directory (with .hydra/ and checkpoints/)")
    out = evaluate_run(to_schema(cfg, EvalConfig))
    print(summary(out))
    print(f"written: {Path(out['run']) / 'eval.json'}")


def _spiral_task(cfg) -> None:  # noqa: ANN001
    from mm_repro.config import to_schema
    from mm_repro.spiral import SpiralConfig, run_spiral

    result = run_spiral(to_schema(cfg, SpiralConfig))
    for name, r in result["results"].items():
        print(
            f"{name:<15} test acc {r['test_accuracy']:6.2f} %  boundary changes/line "
            f"{r['boundary_changes_per_grid_line']:6.2f}  hidden low-confidence "
            f"{100 * r['hidden_low_confidence_fraction']:5.1f} %"
        )
    print("paper's claims hold here:", ", ".join(f"{k}={v}" for k, v in result["claims"].items()))
    print(f"written: {Path(cfg.out) / 'spiral.json'} and {', '.join(result['figures'])}")


TASKS: dict[str, Callable] = {
    "spiral": _spiral_task,
    "train": _train_task,
    "tables": _tables_task,
    "evaluate": _evaluate_task,
    "bench": _bench_task,
}

# Errors of jobs that failed on bad input; caught inside the job so that the other jobs of a sweep still run and
# Hydra prints no "Error executing job" preamble. main() reports them, one line each.
FAILED_JOBS: list[str] = []


def _guarded(task: Callable) -> Callable:
    def job(cfg) -> None:  # noqa: ANN001
        from hydra.core.hydra_config import HydraConfig
        from omegaconf.errors import OmegaConfBaseException

        from mm_repro.errors import UserError

        try:
            task(cfg)
        except (UserError, OmegaConfBaseException) as exc:
            if os.environ.get("MM_REPRO_DEBUG") == "1":
                raise
            overrides = " ".join(HydraConfig.get().overrides.task)
            prefix = (
                f"job {HydraConfig.get().job.num} ({overrides}): " if HydraConfig.get().mode.name == "MULTIRUN" else ""
            )
            FAILED_JOBS.append(prefix + _one_line(exc))

    return job


def _known_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_group_choices(command: str, args: list[str]) -> None:
    """An unknown `group=option` (also in a sweep list) gets one line listing the options, before Hydra runs."""
    from mm_repro.errors import UserError

    groups = [p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"]
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in groups or value.startswith(("choice(", "range(", "glob(")):
            continue
        options = _known_options(key)
        for choice in value.split(","):
            if choice and choice not in options:
                raise UserError(f"{key}={choice!r} is not an option; choose one of: {', '.join(options)}")


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines) if lines else type(exc).__name__
    return text.replace("\t", " ")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help") or argv[0] not in TASKS:
        if argv and argv[0] not in ("-h", "--help", "help"):
            sys.stderr.write(f"unknown command {argv[0]!r}\n")
        sys.stderr.write(USAGE)
        return 0 if argv and argv[0] in ("-h", "--help", "help") else 2
    command, args = argv[0], argv[1:]
    asks_job = (
        any(a in ("--cfg", "-c") and b == "job" for a, b in zip(args, args[1:], strict=False)) or "--cfg=job" in args
    )
    if asks_job and "--resolve" not in args:  # show the protocol's values, not ${protocol...} interpolations
        args.append("--resolve")

    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mm_repro.errors import UserError
    from mm_repro.train import Preempted

    debug = os.environ.get("MM_REPRO_DEBUG") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us, so that they become one line
    sys.argv = [f"mm_repro {command}", *args]
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=command)(_guarded(TASKS[command]))
    try:
        check_group_choices(command, args)
        app()
    except Preempted as exc:
        sys.stderr.write(f"{exc}\n")
        return exc.exit_code
    except (UserError, HydraException, OmegaConfBaseException, OSError, ValueError) as exc:
        if debug:
            raise
        message = f"cannot write {exc.filename}: {exc.strerror}" if isinstance(exc, OSError) else _one_line(exc)
        sys.stderr.write(f"error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    for line in FAILED_JOBS:
        sys.stderr.write(f"error: {line}\n")
    return 2 if FAILED_JOBS else 0
