"""`python -m mm_repro evaluate run=DIR`: the paper's evaluations beyond accuracy on a trained run.

Writes `eval.json` (and PNGs) into the run directory; `tables` reads it for Tables 7 and 9.
- FGSM (Table 7): white-box, one step, x + eps * sign(grad_x loss), model in eval mode. The paper gives no eps or
  input space (docs/protocol.md §2, UNCONFIRMED), so both conventions are reported:
  `normalized_eps<eps>`: the official code's old `attacks.py`: normalised inputs, loss = BCE on softmax, no clipping
  (eps 0.03 by default; Table 7 is compared with this one);
  `pixel_eps<eps>`: the common one: pixels in [0, 1], cross-entropy, clipped to [0, 1] (eps 8/255 by default).
- Novel deformations (Tables 4, 9): rotation by U(-d, d) degrees, shear by U(-s, s) radians (the Keras/torchsample
  matrix [[1, -sin s], [0, cos s]] of the official `affine_transforms.py`), zoom by z (z < 1 zooms in on a central box
  of z x size, z > 1 shrinks the image); one bilinear `grid_sample` per batch, black fill in pixel space (where the
  official loader filled is UNCONFIRMED), angles drawn from a seeded generator.
- Calibration (beyond the paper): expected calibration error over 15 equal-width confidence bins and a reliability
  diagram (reliability.png).
- Flattening (section 3): per class, the singular values of the (uncentred) hidden states at each mixing point over
  the test set; the top singular value and the sum of the rest, per class and averaged (flattening.png).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mm_repro import records
from mm_repro.config import EvalConfig
from mm_repro.console import progress
from mm_repro.data import Splits
from mm_repro.errors import UserError
from mm_repro.evaluation.loading import check_same_data, load_run
from mm_repro.evaluation.measures import (
    deform,
    deformation_names,
    expected_calibration_error,
    features_before_head,
    fgsm,
    flattening,
    knn_errors,
    normalize,
    pgd,
)
from mm_repro.evaluation.report import plot_reliability, plot_spectra
from mm_repro.method.points import INPUT, state_at
from mm_repro.training.devices import training_device


def _accuracy(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return 100.0 * correct / sum(len(y) for _, y in batches)


@dataclass
class EvalInputs:
    """What every evaluation gets: the model, the config, the test split (pixels in [0, 1], and normalised)."""

    cfg: EvalConfig
    run: Any
    model: nn.Module
    splits: Splits
    pixels: list[tuple[torch.Tensor, torch.Tensor]]
    clean: list[tuple[torch.Tensor, torch.Tensor]]
    mean: torch.Tensor
    std: torch.Tensor
    run_dir: Path
    figures: list[Callable[[], str]] = field(default_factory=list)  # drawn once eval.json is written

    @property
    def label(self) -> str:
        """The run a figure shows: its directory (the last two parts) and which checkpoint."""
        return f"{self.run_dir.parent.name}/{self.run_dir.name} ({self.cfg.checkpoint} checkpoint)"

    @property
    def figure_prefix(self) -> str:
        """Figures of the best checkpoint's evaluation are `best_<name>.png`, beside the last one's."""
        return "best_" if self.cfg.checkpoint == "best" else ""


def eval_fgsm(e: EvalInputs) -> dict:
    out = {}
    for space, eps_list in (("normalized", e.cfg.fgsm_eps_normalized), ("pixel", e.cfg.fgsm_eps_pixel)):
        for eps in eps_list:
            n = e.run.dataset.num_classes
            adv = [(fgsm(e.model, x, y, eps, space, e.mean, e.std, n), y) for x, y in e.pixels]
            with torch.no_grad():
                out[f"{space}_eps{eps:g}"] = {"accuracy": _accuracy(e.model, adv), "eps": eps, "space": space}
    return out


@torch.no_grad()
def eval_deformations(e: EvalInputs) -> dict:
    out = {}
    for name, kind, magnitude in deformation_names():
        g = torch.Generator().manual_seed(e.cfg.deformation_seed)
        batches = [(normalize(deform(x, kind, magnitude, g), e.mean, e.std), y) for x, y in e.pixels]
        out[name] = {"accuracy": _accuracy(e.model, batches), "kind": kind, "magnitude": magnitude}
    return out


@torch.no_grad()
def eval_calibration(e: EvalInputs) -> dict:
    probs = torch.cat([F.softmax(e.model(x).float(), 1) for x, _ in e.clean]).cpu()
    labels = torch.cat([y for _, y in e.clean]).cpu()
    out = expected_calibration_error(probs, labels, e.cfg.ece_bins)
    path = e.run_dir / f"{e.figure_prefix}reliability.png"
    out["figure"] = path.name
    e.figures.append(lambda: plot_reliability(out, path, e.label))
    return out


@torch.no_grad()
def eval_flattening(e: EvalInputs) -> dict:
    labels = e.splits.test.labels
    per_class = e.cfg.flattening_max_per_class
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique()])
    device = e.mean.device
    x = normalize(e.splits.test.images[keep].to(device).float() / 255, e.mean, e.std)
    out: dict[str, Any] = {}
    points = getattr(e.model, "mixing_points", None) or [INPUT, *(k for k in e.run.method.layers if k != INPUT)]
    for k in points:  # a staged model's points; a model of named points, the input and the run's named points
        step = e.cfg.batch_size
        batches = [state_at(e.model, k, x[i : i + step]).cpu() for i in range(0, len(x), step)]
        out[f"k{k}"] = flattening(torch.cat(batches), labels[keep])
    path = e.run_dir / f"{e.figure_prefix}flattening.png"
    out["figure"] = path.name
    e.figures.append(lambda: plot_spectra(out, path, e.label))
    return out


def eval_pgd(e: EvalInputs) -> dict:
    c, n = e.cfg, e.run.dataset.num_classes
    attacks = {
        f"normalized_unbounded_steps{c.pgd_steps_normalized}_step{c.pgd_step_normalized:g}": (
            c.pgd_steps_normalized,
            c.pgd_step_normalized,
            None,
            "normalized",
        ),
        f"pixel_eps{c.pgd_eps_pixel:.4g}_steps{c.pgd_steps_pixel}": (
            c.pgd_steps_pixel,
            c.pgd_step_pixel,
            c.pgd_eps_pixel,
            "pixel",
        ),
    }
    out = {}
    for name, (steps, size, eps, space) in attacks.items():
        adv = [(pgd(e.model, x, y, steps, size, eps, space, e.mean, e.std, n), y) for x, y in e.pixels]
        with torch.no_grad():
            accuracy = _accuracy(e.model, adv)
        out[name] = {"accuracy": accuracy, "steps": steps, "step_size": size, "eps": eps, "space": space}
    return out


def eval_knn(e: EvalInputs) -> dict:
    """k-NN test error on the features before the final linear layer, the run's own training split (what it trained
    on, without augmentation) as the neighbours."""
    device, b = e.mean.device, e.cfg.batch_size
    train = e.splits.train
    batches = [
        (normalize(train.images[i : i + b].to(device).float() / 255, e.mean, e.std), train.labels[i : i + b])
        for i in range(0, len(train.labels), b)
    ]
    labels = train.labels.to(device)
    test_labels = torch.cat([y for _, y in e.clean])
    errors = knn_errors(
        features_before_head(e.model, batches), labels, features_before_head(e.model, e.clean), test_labels, e.cfg.knn_k
    )
    return {
        "features": "input of the final linear layer",
        "train_images": len(labels),
        **{f"k{k}": {"error": err, "accuracy": 100 - err} for k, err in errors.items()},
    }


EVALUATIONS: dict[str, Callable[[EvalInputs], dict]] = {
    "fgsm": eval_fgsm,
    "pgd": eval_pgd,
    "knn": eval_knn,
    "deformations": eval_deformations,
    "calibration": eval_calibration,
    "flattening": eval_flattening,
}


def evaluate_run(ecfg: EvalConfig) -> dict:
    """Run the suite on one complete run; merges its results into the run's eval.json (and PNGs) and returns it.
    Results of another checkpoint (the run was retrained since) are dropped rather than merged."""
    run_dir = Path(ecfg.run)
    with training_device(ecfg.device, in_sweep=False) as device:
        cfg, model, splits, epoch, result = load_run(run_dir, device, ecfg.dataset_root, ecfg.checkpoint)
        names = ("test", "train") if "knn" in ecfg.suite else ("test",)
        data = check_same_data(run_dir, result, splits, names, cfg.dataset.root)
        if "knn" in ecfg.suite and max(ecfg.knn_k) > len(splits.train.labels):
            raise UserError(
                f"knn_k={ecfg.knn_k}: {max(ecfg.knn_k)} neighbours, but the run's training split holds "
                f"{len(splits.train.labels)} images; choose at most {len(splits.train.labels)}"
            )
        test = splits.test
        mean = torch.tensor(cfg.dataset.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(cfg.dataset.std, device=device).view(1, -1, 1, 1)
        b = ecfg.batch_size
        pixels = [
            (test.images[i : i + b].to(device).float() / 255, test.labels[i : i + b].to(device))
            for i in range(0, len(test.labels), b)
        ]
        clean = [(normalize(x, mean, std), y) for x, y in pixels]
        inputs = EvalInputs(ecfg, cfg, model, splits, pixels, clean, mean, std, run_dir)
        best = ecfg.checkpoint == "best"
        digest = records.checkpoint_digest(run_dir / (records.BEST_CHECKPOINT if best else records.CHECKPOINT))
        target = run_dir / ("eval_best.json" if best else records.EVAL)
        previous = _read_eval(target)
        out: dict[str, Any] = previous if previous.get("checkpoint_sha256") == digest else {}
        out.update({"run": str(run_dir), "checkpoint": ecfg.checkpoint, "checkpoint_epoch": epoch})
        out["checkpoint_sha256"] = digest
        out["test_images"] = len(test.labels)
        out["data"] = data
        with torch.no_grad():
            out["clean"] = {"accuracy": _accuracy(model, clean)}
        for name in (bar := progress(ecfg.suite, desc="evaluate", unit="evaluation")):
            bar.set_postfix_str(name)
            # merged per entry: a second FGSM call with other eps keeps the eps an earlier call measured
            out[name] = {**out.get(name, {}), **EVALUATIONS[name](inputs)}
    records.write_json(target, out)  # first the numbers, then their figures: a failure never leaves new figures
    for draw in inputs.figures:  # beside old numbers
        draw()
    out["written"] = str(target)
    return out


def _read_eval(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
