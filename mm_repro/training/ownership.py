"""A run directory made this process's, and only when nothing forbids it: a finished run is left as it is (`completed`),
a run of another config is refused; the directory is locked, its checkpoint, config, data and tensors checked before
anything in it changes (`claim`), and only then taken over (`take_over`): interrupted temporaries removed, an
earlier attempt's records archived, checkpoints/best.pt settled against the records resumed from, .hydra/ written.
A refused start leaves the directory as it was."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mm_repro import records
from mm_repro.errors import UserError
from mm_repro.records.checkpoint import config_changes, describe_changes
from mm_repro.training import distributed
from mm_repro.training.run import Job, Run


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
        saved_config = records.load_last(checkpoint).identity.config if checkpoint.exists() else {"config": "?"}
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
        best = records.load_best(path)
    except UserError:  # damaged: it cannot be trusted as the best model
        return {"epoch": None, "run_id": None}
    return {"epoch": best.epoch, "run_id": best.identity.run_id}


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
    saved = records.load_last(checkpoint)
    if len(saved.rng_ranks) != run.world.size:
        raise UserError(
            f"checkpoint {checkpoint} was written by {len(saved.rng_ranks)} process(es); resume it with as many"
        )
    changes = config_changes(saved.identity.config, job.config)
    if changes:
        raise UserError(describe_changes(run_dir, changes))
    moved = [
        f"{split} split: {saved.identity.data[split]} -> {run.data[split]}"
        for split in ("train", "test")
        if saved.identity.data and saved.identity.data.get(split) != run.data[split]
    ]
    if moved:
        raise UserError(
            f"{run_dir} was trained on other data than dataset.root={job.cfg.dataset.root} holds now "
            f"({'; '.join(moved)}); resuming would mix two datasets. Point dataset.root at the data it was "
            "trained on, or pass train.resume=false to start over"
        )
    try:
        trainer.load(index, {"model": saved.model, "optimizer": saved.optimizer, "scaler": saved.scaler})
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"checkpoint {checkpoint} does not fit the model {job.cfg.model.name} (width {job.cfg.model.width}): "
            f"{reason}; it was left untouched: pass train.resume=false to start over"
        ) from None
    run.rng.load_state(saved.rng_ranks[run.world.rank], str(checkpoint))
    run_id = saved.identity.run_id or uuid.uuid4().hex
    best = best_checkpoint_action(saved.identity.metrics, saved.epoch, _best_on_disk(run_dir), run_id)
    run.resume(saved, run_id, *best)


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
            records.write_metrics(run_dir / records.METRICS, run.saved.identity.metrics)
            _settle_best(run)
        for name, node in job.hydra_files.items():
            (run_dir / ".hydra").mkdir(exist_ok=True)
            OmegaConf.save(node, run_dir / ".hydra" / name)
        if run.saved:
            step = run.saved.step
            mid = f", at step {step} of epoch {run.saved.epoch + 1}" if step else ""
            run.say(f"resuming {run_dir} after epoch {run.saved.epoch}{mid}")
            if not run.rng.noise_restored and job.cfg.model.dropout > 0:
                run.say(
                    "warning: its checkpoint predates the saved noise stream (mm_repro <= 0.2.0): its dropout masks go "
                    "on from the run's seed, not where they stopped, so this run is not the unbroken run's twin"
                )
    distributed.barrier(run.world)


def _settle_best(run: Run) -> None:
    """Carry out `run.best_action` (best_checkpoint_action) on checkpoints/best.pt."""
    saved, run_dir = run.saved, run.run_dir
    if run.best_action == "rewrite":
        row = next(r for r in saved.identity.metrics if r["epoch"] == run.best_epoch)
        best = saved.best(row["epoch"], row["test_error"], run.run_id)
        records.save_checkpoint(run_dir / records.BEST_CHECKPOINT, best.to_dict())
        run.note(f"checkpoints/best.pt rewritten from last.pt: the best epoch ({run.best_epoch}) is last.pt's own")
    elif run.best_action == "archive":
        moved = records.archive(run_dir, (records.BEST_CHECKPOINT,))
        run.note(
            f"checkpoints/best.pt did not hold the best epoch of the records resumed from (after epoch "
            f"{saved.epoch}); moved to {moved}"
        )


def resume_point(saved: records.LastState | None) -> tuple[int, int]:
    """(epoch, step) a checkpoint resumes at; (0, 0) without one."""
    if not saved:
        return 0, 0
    return saved.epoch, saved.step
