"""The runs trained together in one process (a single run, or a pack of a sweep's runs) and their shared state:
the trainer, the data, the epoch and the step within it, the time, and the checkpoints (`Pack`). `open_runs` takes
each run directory over (lock, resume check, records of an earlier attempt archived, `.hydra/` written) only after
everything that can fail on bad input has passed, so a refused start leaves the directory as it was.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mm_repro import distributed, records
from mm_repro.builders import build_trainer
from mm_repro.checkpoint import CheckpointWriter, config_changes, describe_changes, to_host
from mm_repro.data import DeviceLoader
from mm_repro.errors import Diverged, RunFailed, UserError
from mm_repro.runs import Job, Run, resume_point
from mm_repro.runtime import RunRandom, sync
from mm_repro.step import lr_at
from mm_repro.tracking import open_tracker


class Pack:
    """Runs trained together on one device (one run, or a packed sweep group), at one epoch and step."""

    def __init__(
        self, runs: list[Run], trainer: Any, loaders: list[DeviceLoader], test_loader: DeviceLoader, started: float
    ) -> None:
        lead = runs[0]
        self.runs, self.active, self.trainer = runs, list(runs), trainer
        self.loaders = dict(zip((id(r) for r in runs), loaders, strict=True))
        self.test_loader, self.world, self.device = test_loader, lead.world, lead.rng.device
        t = self.train_cfg = lead.job.cfg.train
        self.epochs, self.checkpoint_seconds, self.checkpoint_every = t.epochs, t.checkpoint_seconds, t.checkpoint_every
        self.epoch, self.step, self.seen, self.train_seconds = 0, 0, 0, 0.0
        self.loss_sums = torch.zeros(len(runs), device=self.device)
        self.writer = CheckpointWriter()
        self.started = started  # this session's start, for wall_seconds
        self.last_row, self.last_checkpoint = started, time.perf_counter()  # epoch 1 counts the setup too

    @property
    def train_images(self) -> int:
        return self.loaders[id(self.runs[0])].num_images

    @property
    def steps_per_epoch(self) -> int:
        loader = self.loaders[id(self.runs[0])]
        return loader.num_batches(loader.num_images // self.world.size)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def any_rank(self, flag: bool) -> bool:
        return distributed.any_rank(flag, self.world, self.device)

    def sync(self) -> None:
        sync(self.device)

    def resume_position(self) -> None:
        """Epoch, step and per-run state from the runs' checkpoints (all at the same point: the launcher packs so)."""
        points = {resume_point(r.saved) for r in self.runs}
        if len(points) > 1:
            raise UserError(f"runs at different points (epoch, step) {sorted(points)} cannot be packed together")
        self.epoch, self.step = points.pop()
        for i, r in enumerate(self.runs):
            position = r.saved["position"] if r.saved else None
            if position:
                r.order = position["order"].to(self.device)
                r.share = self._share(r.order)
                self.loss_sums[i] = position["loss_sum"].to(self.device)
                self.seen = position["seen"]
            r.metrics = list(r.saved["metrics"]) if r.saved else []
            r.wall_base = r.saved["wall_seconds"] if r.saved else 0.0

    def start_epoch(self) -> None:
        t = self.train_cfg
        self.trainer.set_lr(lr_at(self.epoch, t.lr, t.milestones, t.gamma))  # the schedule alone sets the LR
        if self.step == 0:
            for r in self.active:
                r.order = distributed.broadcast(self.loaders[id(r)].order(r.rng.torch), self.world)
                r.share = self._share(r.order)
            self.loss_sums.zero_()
            self.seen, self.train_seconds = 0, 0.0
        self.resumed_seen = self.seen

    def _share(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's interleaved part of an epoch order (all of it without DDP)."""
        return order[self.world.rank :: self.world.size][: len(order) // self.world.size]

    def batch(self, i: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        xs, ys = [], []
        for r in self.active:
            x, y = self.loaders[id(r)].batch(r.share, i, r.rng.torch)
            xs.append(x)
            ys.append(y)
        return xs, ys

    def add_losses(self, losses: torch.Tensor, n: int) -> None:
        self.loss_sums += losses.float() * n
        self.seen += n

    def epoch_losses(self) -> list[float]:
        sums = distributed.all_sum(self.loss_sums.clone(), self.world)
        self.seen_all = self.seen * self.world.size
        return (sums / max(self.seen_all, 1)).tolist()

    def epoch_seconds(self) -> float:
        """Real time since the last epoch's records (every run of a pack shares the epoch, so it is read once)."""
        now = time.perf_counter()
        seconds, self.last_row = now - self.last_row, now
        return seconds

    def metrics_row(self, lr: float, loss: float, error: float, nll: float, seconds: float) -> dict:
        rate = (self.seen - self.resumed_seen) * self.world.size / max(self.train_seconds, 1e-9)
        return {
            "epoch": self.epoch,
            "lr": lr,
            "train_loss": loss,
            "test_error": error,
            "test_nll": nll,
            "seconds": seconds,
            "train_images_per_second": rate,
        }

    def checkpoint_due(self) -> bool:
        every = self.checkpoint_every
        return time.perf_counter() - self.last_checkpoint >= self.checkpoint_seconds or bool(
            every and self.epoch % every == 0
        )

    def save_all(self) -> None:
        """Every active run's checkpoint: copied to the host now, written in the background. A run whose state is
        no longer finite (weights, momentum or loss) writes none: it stops as diverged, and its last good checkpoint
        stays on disk; so a stop signal after a blow-up never replaces a good checkpoint with a bad one."""
        for i, r in reversed(list(enumerate(self.active))):
            if not _finite_state(self.trainer.state(i), self.loss_sums[i]):
                where = f"epoch {self.epoch + 1}, step {self.step}" if self.step else f"epoch {self.epoch}"
                self.drop(r, Diverged(r.diverged_message(f"by {where} (its weights or loss are not finite)")), {})
        mid_epoch = self.step > 0
        writes = []
        for i, r in enumerate(self.active):
            rng_ranks = distributed.gather(r.rng.state(), self.world)
            partial = distributed.all_sum(self.loss_sums[i].clone(), self.world) / self.world.size
            position = {"step": self.step, "order": r.order, "loss_sum": partial, "seen": self.seen}
            state = {
                **self.trainer.state(i),
                "rng_ranks": rng_ranks,
                "epoch": self.epoch,
                "position": position if mid_epoch else None,
                "metrics": r.metrics,
                "wall_seconds": r.wall_base + self.elapsed(),
                "config": r.job.config,
                "run_id": r.run_id,
                "data": r.data,
            }
            writes.append((r.run_dir / records.CHECKPOINT, to_host(state)))
            r.checkpoint_epoch = self.epoch
        if self.world.is_main and writes:
            self.writer.write(writes)
        distributed.barrier(self.world)
        self.last_checkpoint = time.perf_counter()

    def drop(self, r: Run, failure: RunFailed, values: dict) -> None:
        """A diverged run stops alone: its failure record, its line, and the rest of the pack goes on."""
        r.outcome = failure
        if self.world.is_main:
            shown = {k: str(v) for k, v in values.items() if k in ("train_loss", "test_error", "test_nll")}
            records.write_failure(
                r.run_dir, "diverged", str(failure), self.epoch, values=shown, checkpoint_epoch=r.checkpoint_epoch
            )
        r.note(f"error: {failure}")
        i = self.active.index(r)
        self.trainer.drop(i)
        self.loss_sums = torch.cat([self.loss_sums[:i], self.loss_sums[i + 1 :]])
        self.active.remove(r)

    def stop_message(self, signum: int | None, mid_epoch: bool) -> str:
        where = f"at epoch {self.epoch + 1}, step {self.step}" if mid_epoch else f"after epoch {self.epoch}"
        dirs = ", ".join(str(r.run_dir) for r in self.active)
        return f"stopped by signal {signum} {where}; checkpoint written in {dirs}: rerun the same command to resume"


def _finite_state(state: dict, loss_sum: torch.Tensor) -> bool:
    """Are every floating tensor of a run's model and optimizer state, and its loss so far, finite? (One sync.)"""
    flags = [torch.isfinite(loss_sum).all()]
    stack: list[Any] = [state["model"], state["optimizer"].get("state", {})]
    while stack:
        node = stack.pop()
        if isinstance(node, torch.Tensor):
            if node.is_floating_point():
                flags.append(torch.isfinite(node).all())
        elif isinstance(node, dict):
            stack.extend(node.values())
    return bool(torch.stack(flags).all())


def _claim(run: Run, trainer: Any, index: int) -> None:
    """Lock the run directory and check everything a start or resume reads (the checkpoint, its config, data and
    tensors) before anything in the directory changes: a refused start leaves it as it was."""
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
    data_changes = [
        f"{split} split: {saved['data'][split]} -> {run.data[split]}"
        for split in ("train", "test")
        if saved.get("data") and saved["data"].get(split) != run.data[split]
    ]
    if data_changes:
        raise UserError(
            f"{run_dir} was trained on other data than dataset.root={job.cfg.dataset.root} holds now "
            f"({'; '.join(data_changes)}); resuming would mix two datasets. Point dataset.root at the data it was "
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


def _take_over(run: Run) -> None:
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
        for name, node in job.hydra_files.items():
            (run_dir / ".hydra").mkdir(exist_ok=True)
            OmegaConf.save(node, run_dir / ".hydra" / name)
    distributed.barrier(run.world)


@contextlib.contextmanager
def open_runs(jobs: list[Job], world: distributed.World, device: torch.device, started: float) -> Iterator[Pack]:
    """The pack of `jobs`, built, claimed, taken over and restored; on the way out, checkpoint writes finished,
    trackers finished, locks released, and a failure record for every run an unexpected error stopped."""
    runs = [Run(job, RunRandom(job.cfg.seed + world.rank, device), world) for job in jobs]
    trainer, loaders, test_loader, data = build_trainer(jobs, [r.rng for r in runs], world, device)
    pack = Pack(runs, trainer, loaders, test_loader, started)
    try:
        for i, run in enumerate(runs):
            run.data = data[i]
            _claim(run, trainer, i)
        for run in runs:
            _take_over(run)
            run.params = trainer.param_count
            if run.saved:
                run.say(f"resuming {run.run_dir} after epoch {run.saved['epoch']}{_mid(run.saved)}")
            if world.is_main:
                job = run.job
                run.tracker = open_tracker(job.cfg.logger, run.run_dir, job.config, str(run.run_dir), job.group)
        pack.resume_position()
        yield pack
    except Exception as exc:
        if not isinstance(exc, UserError) and world.is_main:
            for run in pack.active:
                if run.lock and run.lock.signed:  # only runs this process took over
                    records.write_failure(run.run_dir, "failed", f"{type(exc).__name__}: {exc}", pack.epoch)
            exc.recorded = True  # type: ignore[attr-defined]
        raise
    finally:
        with contextlib.suppress(Exception):
            pack.writer.wait()
        for run in runs:
            code = 0 if isinstance(run.outcome, dict) else getattr(run.outcome, "exit_code", 1)
            run.tracker.finish(code)
            if run.lock:
                run.lock.release()


def _mid(saved: dict) -> str:
    step = (saved.get("position") or {}).get("step", 0)
    return f", at step {step} of epoch {saved['epoch'] + 1}" if step else ""
