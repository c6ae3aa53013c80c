"""The one reader of a finished run's model (`finished_run`: evaluate, the API, flattening), and the run `evaluate`
reads: only a finished run (not one still training, failed, stopped half-way or whose result
belongs to another checkpoint), its config, its model with the weights of the checkpoint asked for (best.pt only
when result.json names it as the best epoch's model), and its data, which must be the data it was trained and tested
on (the fingerprints in result.json)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from mm_repro import records
from mm_repro.config import TrainRunConfig
from mm_repro.data import Splits, fingerprint, image_shape, load_splits
from mm_repro.errors import UserError
from mm_repro.models import build_from
from mm_repro.training.checks import validate_train


@dataclass
class FinishedRun:
    """A finished run, checked: its directory, validated config, result.json, and the checkpoint asked for (loaded;
    `which`: last, the final epoch's, or best, the best test error's)."""

    run_dir: Path
    cfg: TrainRunConfig
    result: dict
    checkpoint: records.LastState | records.BestState
    which: str

    @property
    def epoch(self) -> int:
        return self.checkpoint.epoch

    def model(self, device: torch.device | str = "cpu") -> nn.Module:
        """The run's model with the checkpoint's weights, on `device`, in eval mode."""
        cfg = self.cfg
        model = build_from(cfg.model, cfg.dataset.num_classes, image_shape(cfg.dataset)).to(device)
        try:
            model.load_state_dict(self.checkpoint.model)
        except RuntimeError as exc:
            raise UserError(
                f"run={self.run_dir}: checkpoints/{self.which}.pt does not fit {cfg.model.name} of its "
                f".hydra/config.yaml ({str(exc).strip().splitlines()[0][:160]})"
            ) from None
        return model.eval()


def _digests(claimed: str, held: str) -> tuple[str, str]:
    """Two checksums as a line shows them: 12 characters, or whole where the first 12 are alike."""
    return (claimed[:12], held[:12]) if claimed[:12] != held[:12] else (claimed, held)


def finished_run(run_dir: Path | str, which: str = "last") -> FinishedRun:
    """The one reader of a finished run's model (evaluate, the API, flattening, ...): only a complete run (not one
    still training, failed, or stopped half-way), whose last.pt is the checkpoint its result.json names (its
    checksum), and for `which="best"` whose best.pt is the run's own best epoch's (its run id, its epoch, and the
    checksum result.json names). Each refusal is one line naming the run."""
    run_dir = Path(run_dir)
    if which not in ("last", "best"):
        raise UserError(f"checkpoint={which!r} is not allowed; choose last or best")
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"run={run_dir}: no .hydra/config.yaml there; point run= at a training run directory")
    holder = records.RunLock(run_dir).holder()
    if holder:
        raise UserError(f"run={run_dir} is still training (pid {holder}); use it once it has finished")
    if (run_dir / records.FAILURE).exists():
        try:
            status = records.read_json(run_dir / records.FAILURE).get("status", "failed")
        except ValueError:
            status = "failed"
        raise UserError(f"run={run_dir} {status} (see its failure.json); it has no finished model")
    last = run_dir / records.CHECKPOINT
    if not (run_dir / records.RESULT).is_file():
        stopped = " (it was stopped: its checkpoint is there)" if last.exists() else ""
        raise UserError(
            f"run={run_dir} has not finished{stopped}: no result.json; rerun its train command to finish it"
        )
    if not last.is_file():
        what = "a directory" if last.is_dir() else "missing"
        raise UserError(f"run={run_dir}: checkpoints/last.pt is {what} (result.json is there); its model is lost")
    try:
        result = records.read_json(run_dir / records.RESULT)
        records.check_result(result)
    except ValueError as exc:
        raise UserError(f"run={run_dir}: result.json {exc}") from None
    claimed, held = result.get("checkpoint_sha256"), records.checkpoint_digest(last)
    if claimed and claimed != held:
        shown = _digests(claimed, held)
        raise UserError(
            f"run={run_dir}: result.json belongs to checkpoint {shown[0]}, but checkpoints/last.pt is {shown[1]} "
            "(retrained or replaced since); using it would join one run's model to another's result"
        )
    cfg = validate_train(OmegaConf.load(config_path))
    path = last if which == "last" else run_dir / records.BEST_CHECKPOINT
    if which == "best":
        check_best(run_dir, result)
        if not path.is_file():
            raise UserError(f"run={run_dir} has no checkpoints/best.pt (written from 0.2.0 on); use checkpoint=last")
    checkpoint = records.load_last(path) if which == "last" else records.load_best(path)
    if which == "best" and checkpoint.identity.run_id != result.get("run_id"):
        raise UserError(f"run={run_dir}: checkpoints/best.pt belongs to another run than result.json (run ids differ)")
    if which == "best" and checkpoint.epoch != result["best"]["epoch"]:
        raise UserError(
            f"run={run_dir}: checkpoints/best.pt holds epoch {checkpoint.epoch}, but the run's best test error "
            f"was at epoch {result['best']['epoch']} (result.json); it is not the best model: use checkpoint=last"
        )
    if which == "last" and checkpoint.epoch != result.get("epochs"):
        raise UserError(
            f"run={run_dir}: checkpoints/last.pt holds epoch {checkpoint.epoch}, but result.json's run ended at "
            f"epoch {result.get('epochs')}; it is not the finished model"
        )
    return FinishedRun(run_dir, cfg, result, checkpoint, which)


def load_run(run_dir: Path, device: torch.device, dataset_root: str | None = None, which: str = "last"):
    """What `evaluate` reads: the finished run (`finished_run`), its model on `device`, and its splits (the data it
    was trained and tested on, from `dataset_root` if given)."""
    run = finished_run(run_dir, which)
    cfg = run.cfg
    if dataset_root:
        cfg.dataset.root = dataset_root
    model = run.model(device)
    try:
        splits = load_splits(cfg.dataset, cfg.seed)  # the splits the run saw: its validation split held out again
    except UserError as exc:
        raise UserError(
            f"run={run_dir}: its data cannot be read ({exc}); evaluate needs the run's test split, and suite=[knn] "
            "its training split too: point dataset_root=DIR at the directory that holds them"
        ) from None
    return cfg, model, splits, run.epoch, run.result


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
