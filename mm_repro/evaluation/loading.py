"""The run `evaluate` reads: only a finished run (not one still training, failed, stopped half-way or whose result
belongs to another checkpoint), its config, its model with the weights of the checkpoint asked for (best.pt only
when result.json names it as the best epoch's model), and its data, which must be the data it was trained and tested
on (the fingerprints in result.json)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from mm_repro import records
from mm_repro.config import image_shape
from mm_repro.data import Splits, fingerprint, load_splits
from mm_repro.errors import UserError
from mm_repro.models import build_from
from mm_repro.training.checks import validate_train


def load_run(run_dir: Path, device: torch.device, dataset_root: str | None = None, which: str = "last"):
    """The run's validated config, its model with the weights of checkpoint `which` (last: the final one; best: the
    best test error's, checkpoints/best.pt) in eval mode, its splits and the checkpoint's epoch. Only a complete run is
    evaluated: not one still training, failed or stopped half-way; best.pt must belong to the same run."""
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.exists():
        raise UserError(f"run={run_dir}: no .hydra/config.yaml there; point run= at a training run directory")
    holder = records.RunLock(run_dir).holder()
    if holder:
        raise UserError(f"run={run_dir} is still training (pid {holder}); evaluate it once it has finished")
    if (run_dir / records.FAILURE).exists():
        try:
            status = records.read_json(run_dir / records.FAILURE).get("status", "failed")
        except ValueError:
            status = "failed"
        raise UserError(f"run={run_dir} {status} (see its failure.json); it has no result to evaluate")
    if not (run_dir / records.RESULT).exists() or not (run_dir / records.CHECKPOINT).exists():
        raise UserError(f"run={run_dir} has not finished (no result.json); rerun its train command to complete it")
    try:
        result = records.read_json(run_dir / records.RESULT)
        claimed = result.get("checkpoint_sha256")
    except ValueError as exc:
        raise UserError(f"run={run_dir}: result.json {exc}") from None
    held = records.checkpoint_digest(run_dir / records.CHECKPOINT)
    if claimed and claimed != held:
        raise UserError(
            f"run={run_dir}: result.json belongs to checkpoint {claimed[:12]}, but checkpoints/last.pt is "
            f"{held[:12]} (retrained or replaced since); evaluating it would join one run's model to another's result"
        )
    cfg = validate_train(OmegaConf.load(config_path))
    if dataset_root:
        cfg.dataset.root = dataset_root
    path = run_dir / (records.BEST_CHECKPOINT if which == "best" else records.CHECKPOINT)
    if which == "best":
        check_best(run_dir, result)
    if not path.exists():
        raise UserError(
            f"run={run_dir} has no {path.relative_to(run_dir)} (written from this version on); use checkpoint=last"
        )
    checkpoint = records.load_checkpoint(path, resumable=which == "last")
    if which == "best" and checkpoint.get("run_id") != result.get("run_id"):
        raise UserError(f"run={run_dir}: checkpoints/best.pt belongs to another run than result.json (run ids differ)")
    if which == "best" and checkpoint.get("epoch") != result["best"]["epoch"]:
        raise UserError(
            f"run={run_dir}: checkpoints/best.pt holds epoch {checkpoint.get('epoch')}, but the run's best test error "
            f"was at epoch {result['best']['epoch']} (result.json); it is not the best model: use checkpoint=last"
        )
    model = build_from(cfg.model, cfg.dataset.num_classes, image_shape(cfg.dataset)).to(device)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise UserError(
            f"run={run_dir}: {path.relative_to(run_dir)} does not fit {cfg.model.name} of its .hydra/config.yaml "
            f"({str(exc).strip().splitlines()[0][:160]})"
        ) from None
    model.eval()
    try:
        splits = load_splits(cfg.dataset, cfg.seed)  # the splits the run saw: its validation split held out again
    except UserError as exc:
        raise UserError(
            f"run={run_dir}: its data cannot be read ({exc}); evaluate needs the run's test split, and suite=[knn] "
            "its training split too: point dataset_root=DIR at the directory that holds them"
        ) from None
    return cfg, model, splits, checkpoint["epoch"], result


def check_same_data(run_dir: Path, result: dict, splits: Splits, names: tuple[str, ...], root: str) -> dict[str, str]:
    """The fingerprints of the splits `names` as loaded now, which must be those result.json recorded for the run
    (the data it was trained and tested on): an evaluation on other files would put another dataset's number in the
    run's cell. A result.json written before fingerprints were recorded is taken as it is."""
    found = {name: fingerprint(getattr(splits, name)) for name in names}
    recorded = result.get("data") if isinstance(result.get("data"), dict) else {}
    moved = [f"{n} split: {recorded[n]} -> {fp}" for n, fp in found.items() if recorded.get(n) not in (None, fp)]
    if moved:
        raise UserError(
            f"run={run_dir} was trained and tested on other data than {root} holds now "
            f"({'; '.join(moved)}); point dataset_root=DIR at the files it was trained on"
        )
    return found


def check_best(run_dir: Path, result: dict) -> None:
    """best.pt must be the checkpoint result.json names as the best epoch's model (`best_checkpoint`, recorded from
    this version on); a result without that key is checked by best.pt's epoch alone (load_run)."""
    if "best_checkpoint" not in result:
        return
    named = result["best_checkpoint"]
    if not named:
        raise UserError(
            f"run={run_dir}: result.json records that checkpoints/best.pt does not hold the best epoch's model (epoch "
            f"{result['best']['epoch']}: lost to a stop between two checkpoint writes); use checkpoint=last"
        )
    path = run_dir / records.BEST_CHECKPOINT
    held = records.checkpoint_digest(path) if path.exists() else "nothing"
    if held != named.get("sha256"):
        raise UserError(
            f"run={run_dir}: checkpoints/best.pt is {held[:12]}, but result.json names {str(named.get('sha256'))[:12]} "
            "as the best epoch's model (replaced since); use checkpoint=last"
        )
