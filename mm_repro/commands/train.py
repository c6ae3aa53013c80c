"""`python -m mm_repro train [overrides]` (and `-m` for a sweep): the job Hydra composed becomes a checked `Job` and
trains (training.loop); after a sweep, the summary of what it completed. An experiment file (one paper table's sweep)
run without -m is refused: it would train one cell under the table's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from mm_repro.errors import UserError
from mm_repro.reports.summary import sweep_summary
from mm_repro.sweeps.jobs import DONE_RUNS, job_from_hydra, label_console, share_threads, sweep_group
from mm_repro.training import loop


def run(cfg: Any) -> None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode.name == "MULTIRUN"
    sweep = dict(hydra_cfg.sweeper.get("params") or {})
    if sweep and not multirun:
        experiment = hydra_cfg.runtime.choices.get("experiment")
        raise UserError(
            f"experiment={experiment} is a sweep ({', '.join(f'{k}: {v}' for k, v in sweep.items())}); run it with "
            f"-m: python -m mm_repro train -m experiment={experiment}"
        )
    share_threads(hydra_cfg)
    label_console(hydra_cfg)
    group = sweep_group(hydra_cfg.sweep.dir) if multirun else None
    job = job_from_hydra(cfg, HydraConfig.instance().cfg, Path(hydra_cfg.runtime.output_dir), group)
    loop.run(job, hydra_cfg.job.num if multirun else None)


def closing() -> None:
    """After a sweep: each setup's n and mean final and best test error of the runs it completed."""
    if DONE_RUNS:
        print(sweep_summary(list(DONE_RUNS)), flush=True)
        DONE_RUNS.clear()
