"""`hydra/launcher=packed`: a sweep's jobs grouped into packs that train together on one device
(mm_repro.training.trainers.packed).

Jobs pack together when they share everything but the seed, the method (alpha, layers, pairing) and the experiment: the
same dataset, model, width, schedule, optimizer settings, batch, precision, loss and device, and the same point to
resume from (a fresh start, or the same epoch and step). Only fp32 jobs pack (training.trainers.packed says why fp16
and bf16 train alone), and packs run eager, so a job with `train.compile=true` runs alone and stays compiled; so do
the jobs of `trains_alone` (a method that declares itself unpackable, dropout, a validation split, Adam, a model other
than PreAct and WRN).
A pack holds at most `max_pack` runs, and on CUDA at most as many as fit in 80 % of the free device memory (a
conservative estimate
of each run's weights, optimizer state and saved activations). A job that packs with no other runs alone, through
Hydra's own `run_job`, exactly as under the basic launcher; so does every job of a pack whose start was refused (a run
directory in use, a changed config), so that each gets its own one-line error.

Each packed run keeps its own run directory and records (`.hydra/`, `train.log`, metrics.jsonl, result.json, its own
unpacked `checkpoints/last.pt` and W&B run): `tables` and `evaluate` can't tell it from a run trained alone, and it
can resume packed or alone.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import OmegaConf, open_dict, read_write

from mm_repro import records
from mm_repro.data import image_shape
from mm_repro.errors import UserError
from mm_repro.method import METHODS
from mm_repro.models import REGISTRY, build_from
from mm_repro.sweeps.jobs import job_from_hydra, record_failure, record_success, sweep_group
from mm_repro.training.loop import train_jobs
from mm_repro.training.ownership import resume_point
from mm_repro.training.run import Job
from mm_repro.training.trainers.packed import PACKABLE_PRECISIONS

log = logging.getLogger("mm_repro.packed")


def saved_point(job: Job) -> tuple[int, int]:
    path = job.run_dir / records.CHECKPOINT
    if not job.cfg.train.resume or not path.exists():
        return 0, 0
    try:
        return resume_point(records.load_last(path))
    except UserError:  # an unreadable checkpoint: the run alone says so, in one line
        return -1, id(job)


PACKED_FAMILIES = ("preact", "wrn")  # the staged nets the pack's fused forward runs stage by stage


def trains_alone(c: Any) -> bool:
    """Runs whose step the pack does not fuse: a method that declares it cannot be packed (cutout's hole, CutMix's box:
    method.base.Method.packable), a gradient blocked at k, dropout (its mask would come from the pack's shared
    generator), a validation split (a held-out set of the run's own), an optimizer other than the official SGD (the
    pack's update is SGD's), and a model the fused forward cannot run stage by stage (the MNIST nets, torchvision's,
    timm's) or points named by module."""
    return (
        not METHODS[c.method.name].packable
        or c.method.block_gradient
        or c.model.dropout > 0
        or c.dataset.valid_per_class > 0
        or c.train.optimizer != "sgd"
        or REGISTRY[c.model.name].family not in PACKED_FAMILIES
        or any(isinstance(k, str) for k in c.method.layers)
    )


def pack_key(job: Job) -> str:
    """What jobs of one pack share (everything but seed, method and experiment), as a string."""
    c = job.cfg
    if c.train.precision not in PACKABLE_PRECISIONS or c.train.compile or trains_alone(c):
        return f"alone:{job.run_dir}"
    shared = {
        "dataset": asdict(c.dataset),
        "model": asdict(c.model),
        "train": asdict(c.train),
        "device": c.device,
        "deterministic": c.deterministic,
        "resume": saved_point(job),
    }
    return json.dumps(shared, sort_keys=True, default=str)


def memory_cap(job: Job) -> int:
    """How many runs of `job`'s kind fit in 80 % of the free CUDA memory (no cap on the CPU)."""
    if job.cfg.device == "cpu" or not torch.cuda.is_available():
        return sys.maxsize
    c = job.cfg
    shape = image_shape(c.dataset)  # the job's own images: MNIST's 1 x 28 x 28, Tiny-ImageNet's 3 x 64 x 64
    model = build_from(c.model, c.dataset.num_classes, shape)
    activations = 0

    def count(module: Any, inputs: Any, output: Any) -> None:
        nonlocal activations
        if isinstance(output, torch.Tensor):
            activations += output.numel()

    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    per_run = 4 * (4 * sum(p.numel() for p in model.parameters()) + 2 * activations * c.train.batch_size)
    free, _ = torch.cuda.mem_get_info()
    return max(1, int(0.8 * free // per_run))


def plan_packs(jobs: list[Job], max_pack: int, fits: Callable[[Job], int] = memory_cap) -> list[list[int]]:
    """Indices of `jobs` grouped into packs (in sweep order), each of at most max_pack runs and of what `fits` says
    fits on the device (the login node of a cluster does not cap: the node that trains the pack does)."""
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(pack_key(job), []).append(i)
    packs = []
    for members in groups.values():
        size = max(1, min(max_pack, fits(jobs[members[0]])))
        packs += [members[i : i + size] for i in range(0, len(members), size)]
    return sorted(packs)


def _run_logger(num: int, run_dir: Path) -> logging.Logger:
    """A packed run's lines: its own train.log, and the console with the job's number in front."""
    logger = logging.getLogger(f"mm_repro.training.loop.job{num}")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    file = logging.FileHandler(run_dir / records.TRAIN_LOG, delay=True)
    file.setFormatter(logging.Formatter("%(message)s"))
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(f"[job {num}] %(message)s"))
    logger.addHandler(file)
    logger.addHandler(console)
    return logger


class PackedLaunch:
    """One `launch` call of the packed launcher (hydra_plugins/mm_repro_launchers)."""

    def __init__(self, config: Any, hydra_context: Any, task_function: Any, max_pack: int) -> None:
        self.config, self.hydra_context, self.task_function, self.max_pack = (
            config,
            hydra_context,
            task_function,
            max_pack,
        )

    def compose(self, overrides: list[str], num: int) -> Any:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        HydraConfig.instance().set_config(sweep_config)
        run_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = os.path.abspath(run_dir)
        HydraConfig.instance().set_config(sweep_config)
        return sweep_config

    def alone(self, sweep_config: Any) -> JobReturn:
        """Hydra's own path for one job, as the basic launcher takes it."""
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def launch(self, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        numbered = [(initial_job_idx + i, overrides) for i, overrides in enumerate(job_overrides)]
        configs, jobs, returns = self.prepare(numbered)
        returns.update(self.train(configs, jobs))
        return [returns[num] for num, _ in numbered]

    def prepare(self, numbered: list[tuple[int, list[str]]]) -> tuple[dict, dict, dict]:
        """Each job (number, overrides) composed and checked: (configs, jobs, returns), where a job whose config is
        refused has already run alone (and failed in one line) and has its return."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        group = sweep_group(str(self.config.hydra.sweep.dir))
        configs, jobs, returns = {}, {}, {}
        for num, overrides in numbered:
            configs[num] = self.compose(overrides, num)
            task_cfg = copy.deepcopy(configs[num])
            with open_dict(task_cfg):
                del task_cfg["hydra"]
            try:
                jobs[num] = job_from_hydra(
                    task_cfg, copy.deepcopy(HydraConfig.instance().cfg), _out(configs[num]), group
                )
            except Exception:
                returns[num] = self.alone(configs[num])  # bad input: the job fails alone, in one line
        return configs, jobs, returns

    def train(self, configs: dict, jobs: dict, fits: Callable[[Job], int] = memory_cap) -> dict[int, JobReturn]:
        """The prepared jobs trained, pack by pack (a pack of one alone, as Hydra's basic launcher runs it)."""
        nums, returns = sorted(jobs), {}
        for members in self.packs(jobs, fits):
            if len(members) == 1:
                returns[members[0]] = self.alone(configs[members[0]])
                continue
            log.info(f"packing jobs {', '.join(f'#{n}' for n in members)} into one model on one device")
            for n in members:
                jobs[n].run_dir.mkdir(parents=True, exist_ok=True)
                jobs[n].logger = _run_logger(n, jobs[n].run_dir)
            try:
                outcomes = train_jobs([jobs[n] for n in members])
            except UserError as exc:  # a refused start of one member: each runs alone and says why
                log.info(f"pack {members} could not start together ({exc}); running its jobs alone")
                returns.update({n: self.alone(configs[n]) for n in members})
                continue
            except Exception as exc:  # recorded in every member's directory by train_jobs; reported per job
                outcomes = [exc] * len(members)
            for n, outcome in zip(members, outcomes, strict=True):
                returns[n] = self.report(n, configs[n], jobs[n], outcome)
        assert sorted(returns) == nums
        return returns

    def packs(self, jobs: dict, fits: Callable[[Job], int] = memory_cap) -> list[list[int]]:
        """The job numbers of each pack, in sweep order."""
        nums = sorted(jobs)
        return [[nums[i] for i in pack] for pack in plan_packs([jobs[n] for n in nums], self.max_pack, fits)]

    def report(self, num: int, sweep_config: Any, job: Job, outcome: Any) -> JobReturn:
        overrides = list(sweep_config.hydra.overrides.task)
        if isinstance(outcome, Exception):  # a diverged run (RunFailed) or a crash of the pack
            label = f"job {num} ({' '.join(filter_overrides(overrides))})"
            record_failure(outcome, job.run_dir, True, label, num)
        else:
            record_success(num, job.run_dir)
        ret = JobReturn(overrides=overrides, cfg=OmegaConf.create(job.config), hydra_cfg=sweep_config)
        ret.working_dir, ret.task_name, ret.status = os.getcwd(), "train", JobStatus.COMPLETED
        ret.return_value = outcome if isinstance(outcome, dict) else None
        return ret


def _out(sweep_config: Any) -> Path:
    return Path(str(sweep_config.hydra.runtime.output_dir))
