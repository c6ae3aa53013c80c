"""Training: data -> model -> mixing -> loss -> SGD, once per step; test error and NLL once per epoch.

Reproduces the official Manifold Mixup protocol by default (docs/protocol.md §2): SGD with Nesterov momentum 0.9, lr
0.1, weight decay 1e-4 on every parameter, x0.1 at the milestones (the LR of epoch e is lr * gamma^(milestones <= e), as
the official `adjust_learning_rate`), batch 100, BCE on softmax. `train_jobs` trains one run, or several runs of a sweep
packed on one device (mm_repro.training.trainers.packed), with the same loop: a single run is a pack of one.

What a run can trust (docs/trust.md): one process per run directory (a lock); a resume refused
when the config changed; a checkpoint at least every `train.checkpoint_seconds`, at the end and on a stop signal
(SIGTERM/SIGINT/SIGUSR1/SIGUSR2 finish the step, write it and exit 75); a resumed run ends bitwise where an unbroken
one would on a deterministic CPU run; a non-finite loss or metric stops the run at the epoch's end with failure.json
("diverged"), exit 3, and the last good checkpoint kept.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch
from omegaconf import OmegaConf

from mm_repro import console
from mm_repro.console import emit, hms, progress_bar, time_left
from mm_repro.errors import Diverged, Preempted, RunFailed
from mm_repro.training import distributed
from mm_repro.training.devices import configure_backends, training_device
from mm_repro.training.ownership import completed
from mm_repro.training.run import Job
from mm_repro.training.session import Session, open_session
from mm_repro.training.signals import StopSignals

log = logging.getLogger("mm_repro.training.loop")


def run(job: Job, job_num: int | None = None) -> dict:
    """Train (or resume) one run; returns result.json's content, raises if it failed or diverged."""
    (outcome,) = train_jobs([job], job_num)
    if isinstance(outcome, RunFailed):
        raise outcome
    return outcome


def train_jobs(jobs: list[Job], job_num: int | None = None) -> list[dict | RunFailed]:
    """Train (or resume) `jobs` together on one device; each job's result.json content, or its failure. A job whose
    run is already complete with the same config is left as it is, and its result returned."""
    started = time.perf_counter()  # wall_seconds counts everything from here: setup, steps, evaluation, records
    done = {i: result for i, job in enumerate(jobs) if (result := completed(job)) is not None}
    for i, result in done.items():
        emit(jobs[i].logger, console.complete_line(jobs[i].run_dir, result), to_files=False)
    todo = [job for i, job in enumerate(jobs) if i not in done]
    outcomes = iter(_train_jobs(todo, job_num, started) if todo else [])
    return [done[i] if i in done else next(outcomes) for i in range(len(jobs))]


def _train_jobs(jobs: list[Job], job_num: int | None, started: float) -> list[dict | RunFailed]:
    lead = jobs[0].cfg
    world = distributed.init(use_cuda=lead.device != "cpu" and torch.cuda.is_available())
    local_rank = world.local_rank if world.distributed else None
    try:
        with training_device(lead.device, job_num is not None, local_rank) as device:
            configure_backends(lead.deterministic)
            if lead.train.compile:  # each job of a sweep compiles afresh: no recompile limit carried over
                _reset_compiled_state()
            with open_session(jobs, world, device, started) as session:
                return _train(session)
    finally:
        distributed.shutdown(world)


def _reset_compiled_state() -> None:
    torch._dynamo.reset()
    with contextlib.suppress(ImportError, AttributeError):
        from torch._inductor import cudagraph_trees

        cudagraph_trees.reset_cudagraph_trees()


def _train(session: Session) -> list[dict | RunFailed]:
    """The loop: epochs of training steps, then evaluation, records and (on the time policy) checkpoints."""
    cursor = session.cursor
    for r in session.active:
        r.note("config (resolved):\n" + OmegaConf.to_yaml(r.job.config).rstrip())  # train.log only, as Hydra's
        r.say(session.banner(r))
        r.say(console.EPOCH_HEADER)
    with StopSignals() as stop:
        while session.active and cursor.epoch < session.epochs:
            finished = _train_epoch(session, stop)
            if not finished:
                session.save_all()  # a run whose state went non-finite writes none and stops as diverged
                if not session.active:
                    break
                raise _stopped(session, stop, mid_epoch=True)
            stopping = session.shards.any_rank(stop.received is not None)  # all ranks alike, or one would hang
            _end_epoch(session, stopping)
            if stopping and session.active and cursor.epoch < session.epochs:
                raise _stopped(session, stop, mid_epoch=False)
    for r in session.active:  # finish waits for the last checkpoint: it is on disk before the run counts as done
        r.outcome = session.finish(r)
    return [r.outcome for r in session.runs]


def _stopped(session: Session, stop: StopSignals, mid_epoch: bool) -> Preempted:
    """The stop, once every checkpoint is on disk (before anything else runs: submitit's requeue, the exit), written
    into each run's train.log (the terminal gets it from the CLI)."""
    session.checkpoints.wait()
    message = session.stop_message(stop.received, mid_epoch)
    for r in session.active:
        r.note(message)
    return Preempted(message)


def _train_epoch(session: Session, stop: StopSignals) -> bool:
    """One epoch of every active run (or its rest, after a mid-epoch stop); False if a stop signal ended it."""
    session.start_epoch()
    cursor, shards = session.cursor, session.shards
    steps = cursor.steps_per_epoch
    check_every = 25 if shards.size > 1 else 1  # a collective per check under DDP: not every step
    rows = session.active[0].metrics
    left = hms(time_left(rows, session.epochs - cursor.epoch)) if rows else ""
    desc = f"epoch {cursor.epoch + 1}/{session.epochs}"
    bar = progress_bar(steps, shards.is_main, desc, cursor.loaders[0].batch_size * shards.size, left)
    start = time.perf_counter()
    for i in range(cursor.step, steps):
        xs, ys = cursor.batch(i)
        cursor.add(session.trainer.train_step(xs, ys), len(ys[0]))
        cursor.step = i + 1
        bar.update(cursor.step)
        if cursor.step < steps and cursor.step % check_every == 0 and shards.any_rank(stop.received is not None):
            bar.close()
            cursor.train_seconds += time.perf_counter() - start
            return False
    session.sync()
    bar.close()
    cursor.train_seconds += time.perf_counter() - start
    cursor.step = 0  # the epoch is done: the next checkpoint holds no mid-epoch position
    return True


def _end_epoch(session: Session, stopping: bool) -> None:
    """Losses and test figures of every run; a non-finite one stops that run alone; records, checkpoints, lines."""
    cursor = session.cursor
    losses = cursor.epoch_losses()
    lr = session.trainer.lr
    figures = session.trainer.evaluate(session.test_loader)
    valid = session.trainer.evaluate(session.valid_loader) if session.valid_loader else [None] * len(figures)
    cursor.epoch += 1
    seconds = session.clock.epoch_seconds()
    rows = [
        session.metrics_row(lr, loss, test, v, seconds) for loss, test, v in zip(losses, figures, valid, strict=True)
    ]
    improved = []
    for r, row in list(zip(session.active, rows, strict=True)):
        values = {k: row[k] for k in ("train_loss", "test_error", "test_nll")}
        if all(map(_finite, values.values())):
            if all(row["test_error"] < m["test_error"] for m in r.metrics):
                improved.append(r)
            r.record_epoch(row)
        else:
            listed = ", ".join(f"{k} {v}" for k, v in values.items())
            session.drop(r, Diverged(r.diverged_message(f"in epoch {cursor.epoch} ({listed})")), values, cursor.epoch)
    best = session.best_files(improved)  # written with last.pt when one is due, else alone, in the background
    if cursor.epoch == session.epochs or stopping or session.checkpoints.due(cursor.epoch):
        session.save_all(best)
    elif best:
        session.checkpoints.write(best, resets_clock=False)
    for r in session.active:
        r.log_epoch(session.epochs)


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
