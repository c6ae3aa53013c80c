"""A training session: the runs one process trains together (a single run, or a pack of a sweep's runs), each concern in
its own small class. `Cursor`: the epoch, the step within it, each run's epoch order and batches, the losses so far.
`distributed.Shards`: DDP's share of an epoch order and the collectives. `checkpoint.CheckpointPolicy`: when to
checkpoint, and the writes. `Session`: the runs still training, what happens when one diverges, and a run's state for
its checkpoint. `open_session` claims and takes each run directory over (mm_repro.training.run) only after everything
that can fail on bad input has passed, so a refused start leaves the directory as it was.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from mm_repro import console, records
from mm_repro.errors import Diverged, RunFailed, UserError
from mm_repro.records.tracking import check_tracking, open_tracker
from mm_repro.training.builders import Built, build_trainer
from mm_repro.training.checkpointing import CheckpointPolicy, finite_state
from mm_repro.training.cursor import Cursor
from mm_repro.training.devices import sync
from mm_repro.training.distributed import Shards, World
from mm_repro.training.optim import lr_at
from mm_repro.training.ownership import claim, take_over
from mm_repro.training.randomness import RunRandom
from mm_repro.training.run import Job, Run, tracker_name


class Clock:
    """A session's real time: since it started (wall_seconds counts setup, steps, evaluation and records) and since
    the last epoch's records (each epoch's `seconds`; every run of a pack shares the epoch, so it is read once)."""

    def __init__(self, started: float) -> None:
        self.started = self.last_row = started

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def epoch_seconds(self) -> float:
        now = time.perf_counter()
        seconds, self.last_row = now - self.last_row, now
        return seconds


class Session:
    """The runs one process trains together, their trainer, test data, cursor and checkpoint policy. A run that
    diverges leaves alone (its failure record, one line in its train.log) and the others go on."""

    def __init__(self, runs: list[Run], built: Built, started: float) -> None:
        lead = runs[0]
        self.runs, self.active, self.trainer = runs, list(runs), built.trainer
        self.test_loader, self.valid_loader = built.eval_loaders["test"], built.eval_loaders.get("valid")
        self.device = lead.rng.device
        self.shards = Shards(lead.world, self.device)
        self.cursor = Cursor(list(built.loaders), [r.rng.torch for r in runs], self.shards)
        self.train = t = lead.job.cfg.train
        self.epochs = t.epochs
        self.checkpoints = CheckpointPolicy(t.checkpoint_seconds, t.checkpoint_every, self.shards)
        self.clock = Clock(started)  # epoch 1 counts the setup too

    def sync(self) -> None:
        sync(self.device)

    def banner(self, r: Run) -> str:
        loaders = {"train": self.cursor.loaders[0], "test": self.test_loader, "valid": self.valid_loader}
        images = {name: loader.num_images for name, loader in loaders.items() if loader}
        return console.banner(r.job.cfg, r.params, images, self.device, r.world.size, self.trainer.size, r.run_dir)

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
                if finite_state({"model": model, "optimizer": {}}, torch.zeros(())):
                    row = r.metrics[-1]
                    best = records.BestState(model, row["epoch"], row["test_error"], r.identity())
                    files.append((r.run_dir / records.BEST_CHECKPOINT, best.to_dict()))
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
            if not finite_state(states[id(r)], c.loss_sums[i]):
                epoch = c.epoch + 1 if c.step else c.epoch  # mid-epoch: the epoch under way
                where = f"epoch {epoch}, step {c.step}" if c.step else f"epoch {epoch}"
                message = r.diverged_message(f"by {where} (its weights or loss are not finite)")
                self.drop(r, Diverged(message), {}, epoch)
        files = []
        for i, r in enumerate(self.active):
            state = records.LastState(
                **states[id(r)],
                rng_ranks=self.shards.gather(r.rng.state()),
                epoch=c.epoch,
                position=c.position(i),
                wall_seconds=r.wall_base + self.clock.elapsed(),
                identity=r.identity(),
            )
            files.append((r.run_dir / records.CHECKPOINT, state.to_dict()))
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
        """The run's result. Only the main rank writes checkpoints and the result, so only it names their checksums
        (another rank reading last.pt could find it not yet written)."""
        digest = best_digest = None
        if self.shards.is_main:
            digest = self.checkpoints.digest(r.run_dir / records.CHECKPOINT)
            best = r.run_dir / records.BEST_CHECKPOINT
            best_digest = self.checkpoints.digest(best) if best.exists() else None
        return r.finish(r.wall_base + self.clock.elapsed(), digest, best_digest, self.device)

    def stop_message(self, signum: int | None, mid_epoch: bool) -> str:
        c = self.cursor
        return console.stop_line(signum, c.epoch, c.step, mid_epoch, [r.run_dir for r in self.active])


@contextlib.contextmanager
def open_session(jobs: list[Job], world: World, device: torch.device, started: float) -> Iterator[Session]:
    """The session of `jobs`, built, claimed, taken over and restored; on the way out, checkpoint writes finished,
    trackers finished, locks released, and a failure record for every run an unexpected error stopped."""
    for job in jobs:
        check_tracking(job.cfg.logger)
    runs = [Run(job, RunRandom(job.cfg.seed + world.rank, device), world) for job in jobs]
    built = build_trainer(jobs, [r.rng for r in runs], world, device)
    session = Session(runs, built, started)
    try:
        for i, run in enumerate(runs):
            run.data, run.params = built.data[i], built.trainer.param_count
            claim(run, built.trainer, i)
        for run in runs:
            take_over(run)
            if world.is_main:
                job = run.job
                config = {**job.config, "run_dir": str(run.run_dir)}  # the path in its config, a short name
                run.tracker = open_tracker(job.cfg.logger, run.run_dir, config, tracker_name(job), job.group)
        session.cursor.restore([r.saved for r in runs])
        for run in runs:
            run.continue_records({str(r.run_dir) for r in runs if r is not run})
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
