"""`python -m mm_repro plan <the overrides of a train sweep>`: what the sweep would do, before it does it.

The jobs are expanded by Hydra's own sweeper code (hydra_plugins/mm_repro_launchers/plan_sweeper.py), composed and
checked as the launchers compose them, and grouped into packs as the chosen launcher would (`hydra/launcher=packed`:
what fits in this machine's free GPU memory too; `packed_slurm`: at most `max_pack`, the node caps the rest; any
other launcher: one run per device job). For each device job it reads the run directories (new, resuming at an epoch,
complete) and estimates its hours from the user's own `bench` figures (bench-<device>.json under `bench=DIR`):

    epoch seconds = n * train images / images per second * (1 + epoch_overhead)

with `ours_images_per_second` for a run alone and, for a pack of n, `packed_images_per_second` when the figure was
measured with `pack=n` (else n runs' time alone: no packing gain is assumed). A figure matches a job when the device
(cuda first for `device=auto`), model, width, batch size, precision and compile flag agree, and the dataset has the
32 x 32 RGB images `bench` times. Where no figure matches, the estimate falls back to ASSUMED_SPEEDS, the guessed
speeds behind docs/reproducing.md's GPU-hour table, and says so on its line. Nothing is trained, and nothing is
written.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import filter_overrides
from omegaconf import open_dict

from mm_repro.console import one_line
from mm_repro.data import DATASETS
from mm_repro.errors import UserError
from mm_repro.sweeps.jobs import job_from_hydra
from mm_repro.sweeps.packed import PackedLaunch, memory_cap, saved_point
from mm_repro.training.ownership import completed
from mm_repro.training.run import Job

BENCH_SHAPED = ("cifar10", "cifar100", "svhn", "synthetic")  # 32 x 32 RGB images, the shape `bench` times


# Assumed training-step speeds (images/s) for the official fp32, batch-100 protocol on one modern GPU: guesses built
# from docs/performance.md, never measured with this code; docs/reproducing.md's GPU-hour table is made from them.
ASSUMED_SPEEDS = {"preactresnet18": 20_000, "preactresnet34": 10_000, "preactresnet50": 6_000, "wrn28_10": 3_000}
ASSUMED = "GPU-hours at assumed speeds"


@dataclass
class Planned:
    num: int
    overrides: list[str]
    job: Job | None = None
    refused: str = ""


def train_images(job: Job) -> int:
    """Images per epoch: the split's size (an upper bound under SVHN's per-class cap), less a validation split."""
    d = job.cfg.dataset
    total = d.train_size if d.name == "synthetic" else DATASETS[d.name].train
    if d.per_class_cap:
        total = min(total, d.per_class_cap * d.num_classes)
    return total - d.valid_per_class * d.num_classes


# What plan reads of a bench figure, and the values each may take (bench writes them all).
FIGURE_KEYS = {"device": str, "model": str, "width": int, "batch_size": int, "precision": str}
RATES = ("ours_images_per_second", "packed_images_per_second", "epoch_overhead")


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def check_figure(path: Path) -> dict:
    """A bench figure as plan uses it, or ValueError naming what is wrong: an object with bench's keys, its rates
    finite and positive (the epoch overhead >= 0)."""
    try:
        figure = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not JSON ({exc.msg})") from None
    if not isinstance(figure, dict):
        raise ValueError("is not a JSON object")
    for key, kind in FIGURE_KEYS.items():
        if not isinstance(figure.get(key), kind) or isinstance(figure.get(key), bool):
            raise ValueError(f"{key} is {figure.get(key)!r}, not {'a string' if kind is str else 'an integer'}")
    for key in RATES:
        value = figure.get(key)
        if value is None and key != "ours_images_per_second":
            continue
        low_ok = value >= 0 if key == "epoch_overhead" else value > 0 if isinstance(value, int | float) else False
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not low_ok:
            raise ValueError(f"{key} is {value!r}, not a finite number {'>= 0' if key == 'epoch_overhead' else '> 0'}")
    return figure


def load_figures(where: Path) -> list[tuple[Path, dict]]:
    """Every bench-*.json under `where`; one that plan cannot use is one line naming it (exit 2)."""
    figures = []
    for path in sorted(where.rglob("bench-*.json")) if where.is_dir() else []:
        try:
            figures.append((path, check_figure(path)))
        except ValueError as exc:
            raise UserError(f"bench figure {path}: {exc}; rerun `python -m mm_repro bench` to write it again") from None
    return figures


def figure_for(job: Job, figures: list[tuple[Path, dict]]) -> tuple[Path, dict] | None:
    c = job.cfg
    if c.dataset.name not in BENCH_SHAPED:
        return None
    found = [
        (path, f)
        for path, f in figures
        if (f.get("model"), f.get("width"), f.get("batch_size"), f.get("precision"), bool(f.get("compile")))
        == (c.model.name, c.model.width, c.train.batch_size, c.train.precision, c.train.compile)
        and c.device in ("auto", f.get("device"))
    ]
    found.sort(key=lambda pf: (pf[1].get("device") != "cuda", pf[1].get("method") != c.method.name))
    return found[0] if found else None


def setup_of(job: Job) -> str:
    """What a bench figure must match, as bench's own keys: the command that would measure it."""
    c = job.cfg
    if c.dataset.name not in BENCH_SHAPED:
        return f"dataset={c.dataset.name} (bench times 32 x 32 images)"
    device = "cuda" if c.device == "auto" else c.device
    return (
        f"`bench device={device} model={c.model.name} model.width={c.model.width} batch_size={c.train.batch_size} "
        f"precision={c.train.precision} compile={str(c.train.compile).lower()}`"
    )


def pack_hours(jobs: list[Job], epochs_left: int, figure: dict) -> tuple[float, str]:
    """(hours, how) of one device job: a pack of len(jobs) runs trained for epochs_left more epochs."""
    n, images = len(jobs), train_images(jobs[0])
    if n > 1 and figure.get("pack") == n and figure.get("packed_images_per_second"):
        rate, how = figure["packed_images_per_second"], f"packed {n}: {figure['packed_images_per_second']:.0f} img/s"
    else:
        rate = figure["ours_images_per_second"]
        how = f"{rate:.0f} img/s" + (f" x {n} runs, no packing gain assumed (no pack={n} figure)" if n > 1 else "")
    seconds = n * images / rate * (1 + figure.get("epoch_overhead", 0.0)) * epochs_left
    return seconds / 3600, how


def _state(job: Job) -> tuple[str, int]:
    """('new' | 'resumes at epoch E' | 'complete', epochs left); a finished run of another config raises the
    UserError `train` would (refused)."""
    if completed(job) is not None:
        return "complete", 0
    epoch, _ = saved_point(job)
    if epoch < 0:
        return "unreadable checkpoint (refused at start)", 0
    return ("new" if epoch == 0 else f"resumes after epoch {epoch}"), job.cfg.train.epochs - epoch


def plan(config: Any, hydra_context: Any, job_overrides: list[list[str]]) -> list[str]:
    """The lines `plan` prints."""
    launcher = config.hydra.runtime.choices.get("hydra/launcher") or "basic"
    max_pack = int(config.hydra.launcher.get("max_pack", 1)) if "packed" in launcher else 1
    if max_pack < 1:  # as the launcher would refuse it
        raise UserError(f"hydra.launcher.max_pack={max_pack} must be >= 1")
    launch = PackedLaunch(config, hydra_context, None, max_pack)
    planned = []
    for num, overrides in enumerate(job_overrides):
        overrides = [o for o in overrides if not o.startswith("bench=")]  # plan's own key: no part of a run
        item = Planned(num, overrides)
        sweep_config = launch.compose(overrides, num)
        task_cfg = copy.deepcopy(sweep_config)
        with open_dict(task_cfg):
            del task_cfg["hydra"], task_cfg["bench"]
        try:
            item.job = job_from_hydra(task_cfg, sweep_config, Path(str(sweep_config.hydra.runtime.output_dir)), None)
            completed(item.job)  # a finished run of another config: `train -m` refuses it, so plan does
        except Exception as exc:
            item.job, item.refused = None, one_line(exc)
        planned.append(item)
    jobs = {p.num: p.job for p in planned if p.job}
    fits = memory_cap if launcher == "packed" else (lambda job: sys.maxsize)
    packs = launch.packs(jobs, fits) if max_pack > 1 else [[n] for n in sorted(jobs)]
    figures = load_figures(Path(str(config.bench)))
    shared = set.intersection(*(set(filter_overrides(p.overrides)) for p in planned)) if planned else set()
    common = " ".join(o for o in filter_overrides(planned[0].overrides) if o in shared) if shared else ""
    lines = [
        f"plan: {len(planned)} jobs under hydra/launcher={launcher}"
        + (f" (max_pack {max_pack})" if max_pack > 1 else "")
        + f": {len(packs)} device jobs; nothing is trained or written",
        *([f"every job: {common}"] if common else []),
    ]
    totals: dict[str, float] = {}
    unestimated = 0
    for i, pack in enumerate(packs, 1):
        members = [jobs[n] for n in pack]
        states = [_state(j) for j in members]
        left = max(e for _, e in states)
        match = figure_for(members[0], figures)
        if left == 0:
            estimate = "nothing to train"
        elif match is None and members[0].cfg.model.name in ASSUMED_SPEEDS and members[0].cfg.device != "cpu":
            rate = ASSUMED_SPEEDS[members[0].cfg.model.name]
            hours, _ = pack_hours(members, left, {"ours_images_per_second": rate})
            totals[ASSUMED] = totals.get(ASSUMED, 0.0) + hours
            estimate = f"~{hours:.1f} GPU-hours, ESTIMATE at an assumed {rate} img/s (no bench figure; not measured)"
        elif match is None:
            unestimated += 1
            estimate = f"no bench figure for {setup_of(members[0])}"
        else:
            hours, how = pack_hours(members, left, match[1])
            unit = "GPU-hours" if match[1].get("device") == "cuda" else "CPU-hours"
            totals[unit] = totals.get(unit, 0.0) + hours
            estimate = f"~{hours:.1f} {unit} ({match[0]}: {how})"
        lines.append(f"device job {i}: {len(pack)} run(s), {left} epochs left: {estimate}")
        for n, (state, _) in zip(pack, states, strict=True):
            own = [o for o in filter_overrides(planned[n].overrides) if o not in shared]
            lines.append(f"  #{n} {' '.join(own) or '(no overrides of its own)'} [{state}]")
    for p in planned:
        if p.refused:
            own = [o for o in filter_overrides(p.overrides) if o not in shared]
            lines.append(f"  #{p.num} " + " ".join([*own, "refused, would fail at once:", p.refused]))
    total = ", ".join(f"~{h:.1f} {unit}" for unit, h in totals.items()) or "no estimate"
    if ASSUMED in totals:
        total += " (an ESTIMATE from docs/reproducing.md's guessed speeds, not measured; `bench` measures yours)"
    elif not figures:
        total += f" (no bench figures under {config.bench}: run `python -m mm_repro bench device=cuda out=...` first)"
    elif unestimated:
        total += f"; {unestimated} device job(s) have no matching bench figure (bench model=... batch_size=... out=...)"
    lines.append(f"estimated: {total}")
    return lines


def print_plan(config: Any, hydra_context: Any, job_overrides: list[list[str]]) -> None:
    """Print the plan; a sweep with jobs that would be refused ends it with one error line and exit code 2."""
    lines = plan(config, hydra_context, job_overrides)
    print("\n".join(lines), flush=True)
    refused = sum(" refused, would fail at once: " in line for line in lines)
    if refused:
        raise UserError(f"{refused} of {len(job_overrides)} jobs would be refused at once (listed above)")
