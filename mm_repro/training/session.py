"""A training session: the runs one process trains together (a single run, or a pack of a sweep's runs), each concern in
its own small class. `Cursor`: the epoch, the step within it, each run's epoch order and batches, the losses so far.
`distributed.Shards`: DDP's share of an epoch order and the collectives. `checkpoint.CheckpointPolicy`: when to
checkpoint, and the writes. `Session`: the runs still training, what happens when one diverges, and a run's state for
its checkpoint. `open_session` claims and takes each run directory over (mm_repro.training.runs) only after everything
that can fail on bad input has passed, so a refused start leaves the directory as it was.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch

from mm_repro import records
from mm_repro.data import DeviceLoader
from mm_repro.errors import Diverged, RunFailed, UserError
from mm_repro.records.tracking import check_tracking, open_tracker
from mm_repro.training.builders import build_trainer
from mm_repro.training.checkpointing import CheckpointPolicy
from mm_repro.training.devices import sync
from mm_repro.training.distributed import Shards, World
from mm_repro.training.optim import lr_at
from mm_repro.training.randomness import RunRandom
from mm_repro.training.runs import Job, Run, claim, resume_point, take_over
from mm_repro.training.trainers import Trainer


class Cursor:
    """Where the runs of a session are: the epoch and the step within it, each active run's epoch order (this rank's
    share of it), its losses summed over the epoch so far, the images seen, and the real time of the epoch's steps.
    Lists are in the order of the session's active runs."""

    def __init__(self, loaders: list[DeviceLoader], generators: list[torch.Generator], shards: Shards) -> None:
        self.loaders, self.generators, self.shards = loaders, generators, shards
        self.epoch, self.step, self.seen, self.resumed_seen, self.train_seconds = 0, 0, 0, 0, 0.0
        self.orders: list[torch.Tensor | None] = [None] * len(loaders)
        self.shares: list[torch.Tensor | None] = [None] * len(loaders)
        self.loss_sums = torch.zeros(len(loaders), device=shards.device)

    @property
    def steps_per_epoch(self) -> int:
        loader = self.loaders[0]
        return loader.num_batches(loader.num_images // self.shards.size)

    def restore(self, saved: list[dict | None]) -> None:
        """Epoch, step and each run's mid-epoch position from the runs' checkpoints (one point: the launcher packs
        runs that resume at the same epoch and step)."""
        points = {resume_point(s) for s in saved}
        if len(points) > 1:
            raise UserError(f"runs at different points (epoch, step) {sorted(points)} cannot be packed together")
        self.epoch, self.step = points.pop()
        for i, state in enumerate(saved):
            position = state["position"] if state else None
            if position:
                self.orders[i] = position["order"].to(self.shards.device)
                self.shares[i] = self.shards.share(self.orders[i])
                self.loss_sums[i] = position["loss_sum"].to(self.shards.device)
                self.seen = position["seen"]

    def start_epoch(self) -> None:
        if self.step == 0:  # a new epoch: each run draws its order from its own stream
            for i, (loader, g) in enumerate(zip(self.loaders, self.generators, strict=True)):
                self.orders[i] = self.shards.broadcast(loader.order(g))
                self.shares[i] = self.shards.share(self.orders[i])
            self.loss_sums.zero_()
            self.seen, self.train_seconds = 0, 0.0
        self.resumed_seen = self.seen

    def batch(self, i: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Batch i of every active run: its own share of its own order, augmented with its own generator."""
        pairs = [
            loader.batch(share, i, g)
            for loader, share, g in zip(self.loaders, self.shares, self.generators, strict=True)
        ]
        return [x for x, _ in pairs], [y for _, y in pairs]

    def add(self, losses: torch.Tensor, n: int) -> None:
        self.loss_sums += losses.float() * n
        self.seen += n

    def epoch_losses(self) -> list[float]:
        sums = self.shards.all_sum(self.loss_sums.clone())
        return (sums / max(self.seen * self.shards.size, 1)).tolist()

    def images_per_second(self) -> float:
        """Training images per second of this session's steps in the epoch (all ranks)."""
        return (self.seen - self.resumed_seen) * self.shards.size / max(self.train_seconds, 1e-9)

    def position(self, i: int) -> dict | None:
        """Run i's place in the epoch for a mid-epoch checkpoint (None at an epoch's end)."""
        if self.step == 0:
            return None
        partial = self.shards.all_sum(self.loss_sums[i].clone()) / self.shards.size
        return {"step": self.step, "order": self.orders[i], "loss_sum": partial, "seen": self.seen}

    def remove(self, i: int) -> None:
        for items in (self.loaders, self.generators, self.orders, self.shares):
            del items[i]
        self.loss_sums = torch.cat([self.loss_sums[:i], self.loss_sums[i + 1 :]])


class Session:
    """The runs one process trains together, their trainer, test data, cursor and checkpoint policy. A run that
    diverges leaves alone (its failure record, one line in its train.log) and the others go on."""

    def __init__(
        self,
        runs: list[Run],
        trainer: Trainer,
        loaders: list[DeviceLoader],
        eval_loaders: dict[str, DeviceLoader],
        started: float,
    ) -> None:
        lead = runs[0]
        self.runs, self.active, self.trainer = runs, list(runs), trainer
        self.test_loader, self.valid_loader = eval_loaders["test"], eval_loaders.get("valid")
        self.device = lead.rng.device
        self.shards = Shards(lead.world, self.device)
        self.cursor = Cursor(list(loaders), [r.rng.torch for r in runs], self.shards)
        self.train = t = lead.job.cfg.train
        self.epochs = t.epochs
        self.checkpoints = CheckpointPolicy(t.checkpoint_seconds, t.checkpoint_every, self.shards)
        self.started = self.last_row = started  # the session's start (wall_seconds); epoch 1 counts the setup too

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def epoch_seconds(self) -> float:
        """Real time since the last epoch's records (every run of a pack shares the epoch, so it is read once)."""
        now = time.perf_counter()
        seconds, self.last_row = now - self.last_row, now
        return seconds

    def sync(self) -> None:
        sync(self.device)

    def banner(self, r: Run) -> str:
        valid = self.valid_loader.num_images if self.valid_loader else 0
        train, test = self.cursor.loaders[0].num_images, self.test_loader.num_images
        return r.banner(train, test, self.device, self.trainer.size, valid)

    def start_epoch(self) -> None:
        t = self.train
        self.trainer.set_lr(lr_at(self.cursor.epoch, t.lr, t.milestones, t.gamma))  # the schedule alone sets the LR
        self.cursor.start_epoch()

    def metrics_row(self, lr: float, loss: float, test: dict, valid: dict | None, seconds: float) -> dict:
        """One epoch's row of metrics.jsonl: the test figures (error, NLL, top-5 error with more than 5 classes) and,
        with a validation split, the same figures on it."""
        row = {"epoch": self.cursor.epoch, "lr": lr, "train_loss": loss}
        for split, figures in (("test", test), ("valid", valid or {})):
            row.update({f"{split}_{name}": value for name, value in figures.items()})
        row.update({"seconds": seconds, "train_images_per_second": self.cursor.images_per_second()})
        return row

    def best_files(self, improved: list[Run]) -> list[tuple]:
        """checkpoints/best.pt of each run in `improved` (its test error just reached a new best): the model, the
        epoch, the error, the run's id and config. A run whose weights are not finite gets none."""
        files = []
        for i, r in enumerate(self.active):
            if r in improved:
                model = self.trainer.state(i)["model"]
                if _finite_state({"model": model, "optimizer": {}}, torch.zeros(())):
                    row = r.metrics[-1]
                    state = {"model": model, "epoch": row["epoch"], "test_error": row["test_error"]}
                    files.append((r.run_dir / records.BEST_CHECKPOINT, {**state, **r.identity_state()}))
                    r.best_epoch = row["epoch"]
                else:
                    r.best_epoch = None  # the best epoch's model is not finite: best.pt keeps an older one
        return files

    def save_all(self, extra: list[tuple] | None = None) -> None:
        """Every active run's checkpoint. A run whose state is no longer finite (weights, momentum or loss) writes
        none: it stops as diverged, and its last good checkpoint stays on disk, so a stop signal after a blow-up
        never replaces a good checkpoint with a bad one."""
        c = self.cursor
        states = {id(r): self.trainer.state(i) for i, r in enumerate(self.active)}  # live tensors, read once
        for i, r in reversed(list(enumerate(self.active))):
            if not _finite_state(states[id(r)], c.loss_sums[i]):
                epoch = c.epoch + 1 if c.step else c.epoch  # mid-epoch: the epoch under way
                where = f"epoch {epoch}, step {c.step}" if c.step else f"epoch {epoch}"
                message = r.diverged_message(f"by {where} (its weights or loss are not finite)")
                self.drop(r, Diverged(message), {}, epoch)
        files = []
        for i, r in enumerate(self.active):
            state = {
                **states[id(r)],
                "rng_ranks": self.shards.gather(r.rng.state()),
                "epoch": c.epoch,
                "position": c.position(i),
                "wall_seconds": r.wall_base + self.elapsed(),
                **r.identity_state(),
            }
            files.append((r.run_dir / records.CHECKPOINT, state))
            r.checkpoint_epoch = c.epoch
        active = {r.run_dir for r in self.active}
        self.checkpoints.write(files + [(path, s) for path, s in extra or [] if path.parent.parent in active])

    def drop(self, r: Run, failure: RunFailed, values: dict, epoch: int) -> None:
        """A diverged run stops alone: its failure record (`epoch`: the one its message names), its line, and the rest
        of the session goes on."""
        r.outcome = failure
        if self.shards.is_main:
            shown = {k: str(v) for k, v in values.items() if k in ("train_loss", "test_error", "test_nll")}
            records.write_failure(
                r.run_dir,
                "diverged",
                str(failure),
                epoch,
                values=shown,
                checkpoint_epoch=r.checkpoint_epoch,
            )
        r.note(f"error: {failure}")
        i = self.active.index(r)
        self.trainer.drop(i)
        self.cursor.remove(i)
        self.active.remove(r)

    def finish(self, r: Run) -> dict:
        digest = self.checkpoints.digest(r.run_dir / records.CHECKPOINT)
        best = r.run_dir / records.BEST_CHECKPOINT
        best_digest = self.checkpoints.digest(best) if best.exists() else None
        return r.finish(r.wall_base + self.elapsed(), digest, best_digest, self.device)

    def stop_message(self, signum: int | None, mid_epoch: bool) -> str:
        c = self.cursor
        where = f"at epoch {c.epoch + 1}, step {c.step}" if mid_epoch else f"after epoch {c.epoch}"
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


@contextlib.contextmanager
def open_session(jobs: list[Job], world: World, device: torch.device, started: float) -> Iterator[Session]:
    """The session of `jobs`, built, claimed, taken over and restored; on the way out, checkpoint writes finished,
    trackers finished, locks released, and a failure record for every run an unexpected error stopped."""
    for job in jobs:
        check_tracking(job.cfg.logger)
    runs = [Run(job, RunRandom(job.cfg.seed + world.rank, device), world) for job in jobs]
    trainer, loaders, eval_loaders, data = build_trainer(jobs, [r.rng for r in runs], world, device)
    session = Session(runs, trainer, loaders, eval_loaders, started)
    try:
        for i, run in enumerate(runs):
            run.data, run.params = data[i], trainer.param_count
            claim(run, trainer, i)
        for run in runs:
            take_over(run)
            if world.is_main:
                job = run.job
                run.tracker = open_tracker(job.cfg.logger, run.run_dir, job.config, str(run.run_dir), job.group)
        session.cursor.restore([r.saved for r in runs])
        for run in runs:
            others = {str(r.run_dir) for r in runs if r is not run}
            run.packed_with = sorted(others | set((run.saved or {}).get("packed_with", [])))
            run.metrics = list(run.saved["metrics"]) if run.saved else []
            run.wall_base = run.saved["wall_seconds"] if run.saved else 0.0
        yield session
    except Exception as exc:
        if not isinstance(exc, UserError) and world.is_main:
            for run in session.active:
                if run.lock and run.lock.signed:  # only runs this process took over
                    records.write_failure(run.run_dir, "failed", f"{type(exc).__name__}: {exc}", session.cursor.epoch)
            exc.recorded = True  # type: ignore[attr-defined]
        raise
    finally:
        with contextlib.suppress(Exception):
            session.checkpoints.wait()
        for run in runs:
            code = 0 if isinstance(run.outcome, dict) else getattr(run.outcome, "exit_code", 1)
            run.tracker.finish(code)
            if run.lock:
                run.lock.release()
