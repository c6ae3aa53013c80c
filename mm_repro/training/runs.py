"""The runs a training process holds: `Job` (what to train and where) and `Run` (one run's records, random
streams, lock and tracker, and the lines it writes), plus the epoch's progress bar."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mm_repro import records
from mm_repro.config import TrainRunConfig
from mm_repro.console import emit, hms
from mm_repro.errors import RunFailed, UserError
from mm_repro.records.checkpoint import config_changes, describe_changes
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
    saved: dict | None = None  # the checkpoint resumed from
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

    def banner(
        self, train_images: int, test_images: int, device: torch.device, pack_size: int, valid_images: int = 0
    ) -> str:
        c = self.job.cfg
        packed = f", packed with {pack_size - 1} other run(s)" if pack_size > 1 else ""
        valid = f"{valid_images:,} validation / " if valid_images else ""
        return (
            f"{c.dataset.name} {c.model.name} (width {c.model.width}, {self.params:,} params) {c.method.name} "
            f"alpha={c.method.alpha} layers={list(c.method.layers)} seed={c.seed} | {train_images:,} train / "
            f"{valid}{test_images:,} test images | {device} x {self.world.size} process(es){packed} | {self.run_dir}"
        )

    def identity_state(self) -> dict:
        """What a checkpoint holds of the run besides its training state: records, config, identity, data."""
        return {
            "metrics": self.metrics,
            "config": self.job.config,
            "run_id": self.run_id,
            "data": self.data,
            "packed_with": self.packed_with,
        }

    def record_epoch(self, row: dict) -> None:
        self.metrics.append(row)
        if self.world.is_main:
            records.write_metrics(self.run_dir / records.METRICS, self.metrics)
        self.tracker.log(row, step=row["epoch"])

    def log_epoch(self, epoch: int, epochs: int) -> None:
        row = self.metrics[-1]
        left = (epochs - epoch) * sum(r["seconds"] for r in self.metrics) / len(self.metrics)
        self.say(
            f"{epoch:>7d} {row['lr']:>9.5f} {row['train_loss']:>11.5f} {row['test_error']:>9.2f} "
            f"{row['test_nll']:>9.4f} {row['train_images_per_second']:>9.0f} {hms(left):>10}"
        )

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
        self.say(
            f"final test error {result['final']['test_error']:.2f}% (NLL {result['final']['test_nll']:.4f}); best "
            f"{result['best']['test_error']:.2f}% at epoch {result['best']['epoch']} | {self.run_dir / records.RESULT}"
        )
        return result


def completed(job: Job) -> dict | None:
    """The result of the finished run in `job.run_dir`, when it was trained with this config: rerunning it changes
    nothing. A result of another config refuses the start (one line naming the keys); a malformed one is archived
    by a fresh start. Checked before anything is built, so a finished run is never touched."""
    path = job.run_dir / records.RESULT
    if not job.cfg.train.resume or not path.exists():
        return None
    try:
        result = records.read_json(path)
        records.check_result(result)
    except ValueError:
        return None
    if "setup" in result:
        saved_config = result["config"]
    else:  # a result.json of an earlier mm_repro holds part of the config: compare the checkpoint's
        checkpoint = job.run_dir / records.CHECKPOINT
        saved_config = records.load_checkpoint(checkpoint)["config"] if checkpoint.exists() else {"config": "?"}
    changes = config_changes(saved_config, job.config)
    if changes:
        raise UserError(describe_changes(job.run_dir, changes))
    return result


def best_checkpoint_action(
    metrics: list[dict], epoch: int, on_disk: dict | None, run_id: str
) -> tuple[str, int | None]:
    """What a resume does with checkpoints/best.pt, and the epoch best.pt then holds. best.pt must hold the best
    epoch of the records the run resumes with (last.pt's): `keep` it when it does; `rewrite` it from last.pt's model
    when that best epoch is last.pt's own (a stop fell between the writes of last.pt and best.pt); else `archive` it
    (it holds a later epoch, discarded with the records after last.pt, or an older one) and the best model is lost.
    `on_disk`: best.pt's epoch and run id, or None when there is none (or it cannot be read)."""
    if not metrics:
        return ("archive" if on_disk else "keep"), None
    best = min(metrics, key=lambda r: (r["test_error"], r["epoch"]))["epoch"]
    if on_disk and on_disk.get("epoch") == best and on_disk.get("run_id") == run_id:
        return "keep", best
    if best == epoch:
        return "rewrite", best
    return ("archive" if on_disk else "keep"), None


def _best_on_disk(run_dir: Path) -> dict | None:
    path = run_dir / records.BEST_CHECKPOINT
    if not path.exists():
        return None
    try:
        state = records.load_checkpoint(path, resumable=False)
    except UserError:  # damaged: it cannot be trusted as the best model
        return {"epoch": None, "run_id": None}
    return {"epoch": state.get("epoch"), "run_id": state.get("run_id")}


def claim(run: Run, trainer: Any, index: int) -> None:
    """Lock the run directory and check everything a start or resume reads (the checkpoint, its config, data and
    tensors, loaded into the trainer's place `index`) before anything in the directory changes: a refused start
    leaves it as it was."""
    job, run_dir = run.job, run.job.run_dir
    if run.world.is_main:
        run.lock = records.RunLock(run_dir)
        run.lock.acquire()
    checkpoint = run_dir / records.CHECKPOINT
    if not (job.cfg.train.resume and checkpoint.exists()):
        run.run_id = uuid.uuid4().hex  # a new run: its identity, kept through every resume
        return
    run.saved = saved = records.load_checkpoint(checkpoint)
    if len(saved["rng_ranks"]) != run.world.size:
        raise UserError(
            f"checkpoint {checkpoint} was written by {len(saved['rng_ranks'])} process(es); resume it with as many"
        )
    changes = config_changes(saved["config"], job.config)
    if changes:
        raise UserError(describe_changes(run_dir, changes))
    moved = [
        f"{split} split: {saved['data'][split]} -> {run.data[split]}"
        for split in ("train", "test")
        if saved.get("data") and saved["data"].get(split) != run.data[split]
    ]
    if moved:
        raise UserError(
            f"{run_dir} was trained on other data than dataset.root={job.cfg.dataset.root} holds now "
            f"({'; '.join(moved)}); resuming would mix two datasets. Point dataset.root at the data it was "
            "trained on, or pass train.resume=false to start over"
        )
    try:
        trainer.load(index, saved)
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"checkpoint {checkpoint} does not fit the model {job.cfg.model.name} (width {job.cfg.model.width}): "
            f"{reason}; it was left untouched: pass train.resume=false to start over"
        ) from None
    run.rng.load_state(saved["rng_ranks"][run.world.rank], str(checkpoint))
    run.run_id = saved.get("run_id") or uuid.uuid4().hex
    run.checkpoint_epoch = saved["epoch"]
    run.best_action, run.best_epoch = best_checkpoint_action(
        saved["metrics"], saved["epoch"], _best_on_disk(run_dir), run.run_id
    )


def take_over(run: Run) -> None:
    """Make the claimed run directory this process's: pid in the lock, interrupted temporary files removed, earlier
    records archived (all of them for a run that starts from scratch), `.hydra/` written."""
    job, run_dir = run.job, run.job.run_dir
    if run.world.is_main:
        run.lock.sign()
        records.remove_stale_temporaries(run_dir)
        earlier = (Path(records.FAILURE),) if run.saved else records.ARCHIVED
        archived = records.archive(run_dir, earlier)
        if archived:
            run.say(f"earlier records moved to {archived}")
        if run.saved:  # epochs recorded after the checkpoint belong to the stopped session: drop them
            records.write_metrics(run_dir / records.METRICS, run.saved["metrics"])
            _settle_best(run)
        for name, node in job.hydra_files.items():
            (run_dir / ".hydra").mkdir(exist_ok=True)
            OmegaConf.save(node, run_dir / ".hydra" / name)
        if run.saved:
            step = (run.saved.get("position") or {}).get("step", 0)
            mid = f", at step {step} of epoch {run.saved['epoch'] + 1}" if step else ""
            run.say(f"resuming {run_dir} after epoch {run.saved['epoch']}{mid}")
    distributed.barrier(run.world)


def _settle_best(run: Run) -> None:
    """Carry out `run.best_action` (best_checkpoint_action) on checkpoints/best.pt."""
    saved, run_dir = run.saved, run.run_dir
    if run.best_action == "rewrite":
        row = next(r for r in saved["metrics"] if r["epoch"] == run.best_epoch)
        identity = {k: saved.get(k) for k in ("metrics", "config", "run_id", "data", "packed_with")}
        state = {"model": saved["model"], "epoch": row["epoch"], "test_error": row["test_error"], **identity}
        records.save_checkpoint(run_dir / records.BEST_CHECKPOINT, {**state, "run_id": run.run_id})
        run.note(f"checkpoints/best.pt rewritten from last.pt: the best epoch ({run.best_epoch}) is last.pt's own")
    elif run.best_action == "archive":
        moved = records.archive(run_dir, (records.BEST_CHECKPOINT,))
        run.note(
            f"checkpoints/best.pt did not hold the best epoch of the records resumed from (after epoch "
            f"{saved['epoch']}); moved to {moved}"
        )


def resume_point(saved: dict | None) -> tuple[int, int]:
    """(epoch, step) a checkpoint resumes at; (0, 0) without one."""
    if not saved:
        return 0, 0
    return saved["epoch"], (saved["position"] or {}).get("step", 0)
