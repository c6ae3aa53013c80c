"""One run a process trains (`Job`: what to train and where; `Run`: its records as it trains). A run's records are
its metrics row per epoch (metrics.jsonl, and W&B), what its checkpoints hold besides the training state (records,
config, id, data fingerprints), and at the end its result.json, which names its checkpoint and, when it holds the
best epoch's model, best.pt."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mm_repro import console, records
from mm_repro.config import TrainRunConfig
from mm_repro.console import emit
from mm_repro.data import image_shape
from mm_repro.errors import RunFailed
from mm_repro.records.tracking import NullTracker
from mm_repro.training import distributed
from mm_repro.training.randomness import RunRandom


@dataclass
class Job:
    """One run to train: its checked config, run directory, resolved config, W&B group, what Hydra composed (for
    `.hydra/`), and the logger its lines go to (train.log)."""

    cfg: TrainRunConfig
    run_dir: Path
    config: dict
    group: str | None = None
    hydra_files: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("mm_repro.training.loop"))


def model_spec(cfg: TrainRunConfig) -> dict:
    """The model's constructor arguments (models.build's), its input (one image's shape, pixels in [0, 1] normalised
    with `mean` and `std`, per channel) and its output (the classes): docs/api.md rebuilds a model from them."""
    m, d = cfg.model, cfg.dataset
    return {
        "name": m.name,
        "arch": m.arch,
        "num_classes": d.num_classes,
        "width": m.width,
        "bn_init": m.bn_init,
        "stem_stride": m.stem_stride,
        "dropout": m.dropout,
        "image_shape": list(image_shape(d)),
        "mean": list(d.mean),
        "std": list(d.std),
        "classes_kept": list(d.classes) if d.classes else None,  # dataset.classes: the labels it was trained on
    }


def tracker_name(job: Job) -> str:
    """A run's W&B name: what tells it apart (dataset, model or architecture, method, the overrides that differ from
    the defaults, the seed), at most 80 characters; its path is in its W&B config (`run_dir`)."""
    c = job.cfg
    parts = [c.dataset.name, c.model.arch or c.model.name, c.method.name]
    skip = ("dataset=", "model=", "method=", "seed=", "hydra.", "logger", "dataset.root", "dataset.download", "device")
    overrides = job.hydra_files.get("overrides.yaml")
    parts += [str(o) for o in (overrides or []) if not str(o).startswith(skip)]
    name = " ".join([*parts, f"seed{c.seed}"])
    return name if len(name) <= 80 else name[:77] + "..."


@dataclass
class Run:
    job: Job
    rng: RunRandom
    world: distributed.World
    params: int = 0
    tracker: Any = field(default_factory=NullTracker)
    lock: records.RunLock | None = None
    metrics: list = field(default_factory=list)
    wall_base: float = 0.0  # wall seconds of earlier sessions (from the checkpoint)
    saved: records.LastState | None = None  # the checkpoint resumed from
    run_id: str = ""  # the run's identity, drawn when it starts from scratch and kept through every resume
    data: dict = field(default_factory=dict)  # fingerprints of the train and test splits (data.fingerprint)
    checkpoint_epoch: int | None = None  # the epoch of the last checkpoint on disk (None: none yet)
    packed_with: list[str] = field(default_factory=list)  # the runs it trained packed with, over every session
    best_epoch: int | None = None  # the epoch of the model checkpoints/best.pt holds (or is being written with)
    best_action: str = "keep"  # what take_over does with best.pt after a resume (best_checkpoint_action)
    outcome: dict | RunFailed | None = None

    @property
    def run_dir(self) -> Path:
        return self.job.run_dir

    def say(self, message: str) -> None:
        if self.world.is_main:
            self.job.logger.info(message)

    def note(self, message: str) -> None:
        """A line for train.log only: the terminal gets it once, from the command's final report."""
        if self.world.is_main:
            emit(self.job.logger, message, to_files=True)

    def resume(self, saved: records.LastState, run_id: str, best_action: str, best_epoch: int | None) -> None:
        """Take over a checkpoint: its id (`run_id`: its own, or a new one for a checkpoint of a version that kept
        none), its epoch, and what the resume does with best.pt (ownership.best_checkpoint_action)."""
        self.saved, self.run_id, self.checkpoint_epoch = saved, run_id, saved.epoch
        self.best_action, self.best_epoch = best_action, best_epoch

    def continue_records(self, others: set[str]) -> None:
        """The records a session goes on from: the resumed checkpoint's metrics, real time and pack-mates (none for a
        fresh start), and the runs this session packs it with."""
        self.packed_with = sorted(others | set(self.saved.identity.packed_with if self.saved else []))
        self.metrics = list(self.saved.identity.metrics) if self.saved else []
        self.wall_base = self.saved.wall_seconds if self.saved else 0.0

    def identity(self) -> records.Identity:
        """What a checkpoint holds of the run besides its training state (records.state.Identity)."""
        return records.Identity(
            self.run_id, self.job.config, self.data, self.metrics, self.packed_with, model_spec(self.job.cfg)
        )

    def record_epoch(self, row: dict) -> None:
        self.metrics.append(row)
        if self.world.is_main:
            records.write_metrics(self.run_dir / records.METRICS, self.metrics)
        self.tracker.log(row, step=row["epoch"])

    def log_epoch(self, epochs: int) -> None:
        """The epoch's row of the table, with the time the run still needs."""
        rows = self.metrics
        self.say(console.epoch_line(rows[-1], console.time_left(rows, epochs - rows[-1]["epoch"])))

    def diverged_message(self, what: str) -> str:
        kept = (
            "no checkpoint had been written"
            if self.checkpoint_epoch is None
            else f"its last good checkpoint (after epoch {self.checkpoint_epoch}) was kept"
        )
        return (
            f"run {self.run_dir} diverged {what}; stopped, and {kept} (failure.json says so); lower train.lr, or "
            "start over with train.resume=false"
        )

    def finish(
        self, wall_seconds: float, checkpoint_digest: str, best_digest: str | None, device: torch.device
    ) -> dict:
        """result.json, written; the last line. `best_checkpoint` names best.pt (its epoch and checksum) only when it
        holds the model of the result's best epoch; otherwise it is null and `evaluate checkpoint=best` refuses."""
        identity = {"run_id": self.run_id, "checkpoint_sha256": checkpoint_digest, "data": self.data}
        c = self.job
        result = records.make_result(c.cfg, c.config, self.metrics, identity, self.params, wall_seconds, device)
        best = result["best"]
        held = best_digest is not None and self.best_epoch == best["epoch"]
        result["best_checkpoint"] = {"epoch": best["epoch"], "sha256": best_digest} if held else None
        if not held:
            self.note(
                f"checkpoints/best.pt does not hold the best epoch's model (epoch {best['epoch']}; it was lost to a "
                "stop between two checkpoint writes): result.json says so, and evaluate checkpoint=best refuses it"
            )
        result["packed"], result["packed_with"] = bool(self.packed_with), self.packed_with
        if self.world.is_main:
            records.write_json(self.run_dir / records.RESULT, result)
        self.tracker.summary(result)
        self.say(console.final_line(result, self.run_dir / records.RESULT))
        return result
