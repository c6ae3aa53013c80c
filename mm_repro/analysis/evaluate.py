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

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from mm_repro import records
from mm_repro.analysis.measures import (
    deform,
    deformation_names,
    expected_calibration_error,
    fgsm,
    flattening,
    normalize,
)
from mm_repro.config import validate_train
from mm_repro.data import load_arrays
from mm_repro.errors import UserError
from mm_repro.models import build_from
from mm_repro.training.runtime import training_device


@dataclass
class EvalConfig:
    run: str | None = None
    suite: list[str] = field(default_factory=lambda: ["fgsm", "deformations", "calibration", "flattening"])
    device: str = "auto"
    batch_size: int = 500
    dataset_root: str | None = None  # where the run's dataset is, if not where training found it
    fgsm_eps_normalized: list[float] = field(default_factory=lambda: [0.03])
    fgsm_eps_pixel: list[float] = field(default_factory=lambda: [8 / 255])
    deformation_seed: int = 0
    ece_bins: int = 15
    flattening_max_per_class: int = 500


def _accuracy(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return 100.0 * correct / sum(len(y) for _, y in batches)


def load_run(run_dir: Path, device: torch.device, dataset_root: str | None = None):
    """The run's validated config, its model with the final checkpoint's weights (eval mode), and its test split.
    Only a complete run is evaluated: not one still training, failed or stopped half-way."""
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
        claimed = records.read_json(run_dir / records.RESULT).get("checkpoint_sha256")
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
    checkpoint = records.load_checkpoint(run_dir / records.CHECKPOINT)
    model = build_from(cfg.model, cfg.dataset.num_classes).to(device)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise UserError(
            f"run={run_dir}: checkpoints/last.pt does not fit {cfg.model.name} of its .hydra/config.yaml "
            f"({str(exc).strip().splitlines()[0][:160]})"
        ) from None
    model.eval()
    _, test = load_arrays(cfg.dataset, cfg.seed)
    return cfg, model, test, checkpoint["epoch"]


@dataclass
class EvalInputs:
    """What every evaluation gets: the model, the config, the test split (pixels in [0, 1], and normalised)."""

    cfg: EvalConfig
    run: Any
    model: nn.Module
    test: Any
    pixels: list[tuple[torch.Tensor, torch.Tensor]]
    clean: list[tuple[torch.Tensor, torch.Tensor]]
    mean: torch.Tensor
    std: torch.Tensor
    run_dir: Path


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
    out["figure"] = _plot_reliability(out, e.run_dir / "reliability.png")
    return out


@torch.no_grad()
def eval_flattening(e: EvalInputs) -> dict:
    labels = e.test.labels
    per_class = e.cfg.flattening_max_per_class
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique()])
    device = e.mean.device
    x = normalize(e.test.images[keep].to(device).float() / 255, e.mean, e.std)
    out: dict[str, Any] = {}
    for k in e.model.mixing_points:
        step = e.cfg.batch_size
        batches = [e.model.forward_until(x[i : i + step], k).cpu() for i in range(0, len(x), step)]
        out[f"k{k}"] = flattening(torch.cat(batches), labels[keep])
    out["figure"] = _plot_spectra(out, e.run_dir / "flattening.png")
    return out


EVALUATIONS: dict[str, Callable[[EvalInputs], dict]] = {
    "fgsm": eval_fgsm,
    "deformations": eval_deformations,
    "calibration": eval_calibration,
    "flattening": eval_flattening,
}


def evaluate_run(ecfg: EvalConfig) -> dict:
    """Run the suite on one complete run; merges its results into the run's eval.json (and PNGs) and returns it.
    Results of another checkpoint (the run was retrained since) are dropped rather than merged."""
    unknown = [s for s in ecfg.suite if s not in EVALUATIONS]
    if unknown:
        raise UserError(f"suite={unknown[0]!r} is not an evaluation; choose from {', '.join(EVALUATIONS)}")
    run_dir = Path(ecfg.run)
    with training_device(ecfg.device, in_sweep=False) as device:
        cfg, model, test, epoch = load_run(run_dir, device, ecfg.dataset_root)
        mean = torch.tensor(cfg.dataset.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(cfg.dataset.std, device=device).view(1, -1, 1, 1)
        b = ecfg.batch_size
        pixels = [
            (test.images[i : i + b].to(device).float() / 255, test.labels[i : i + b].to(device))
            for i in range(0, len(test.labels), b)
        ]
        clean = [(normalize(x, mean, std), y) for x, y in pixels]
        inputs = EvalInputs(ecfg, cfg, model, test, pixels, clean, mean, std, run_dir)
        digest = records.checkpoint_digest(run_dir / records.CHECKPOINT)
        previous = _read_eval(run_dir / records.EVAL)
        out: dict[str, Any] = previous if previous.get("checkpoint_sha256") == digest else {}
        out.update({"run": str(run_dir), "checkpoint_epoch": epoch, "checkpoint_sha256": digest})
        out["test_images"] = len(test.labels)
        with torch.no_grad():
            out["clean"] = {"accuracy": _accuracy(model, clean)}
        for name in ecfg.suite:
            out[name] = EVALUATIONS[name](inputs)
    records.write_json(run_dir / records.EVAL, out)
    return out


def _read_eval(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _plot_reliability(calibration: dict, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    table = calibration["table"]
    width = 1 / calibration["bins"]
    ax.bar(
        [b["lower"] for b in table],
        [b["accuracy"] for b in table],
        width,
        align="edge",
        edgecolor="k",
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE = {100 * calibration['ece']:.2f} %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def _plot_spectra(flat: dict, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [k for k in flat if k.startswith("k")]
    fig, axes = plt.subplots(1, len(points), figsize=(3 * len(points), 3), squeeze=False)
    for ax, k in zip(axes[0], points, strict=True):
        for p in flat[k]["per_class"]:
            s = np.asarray(p["spectrum"])
            ax.plot(s / s[0], alpha=0.6, label=f"class {p['class']}")
        ax.set_title(f"mixing point {k[1:]}")
        ax.set_yscale("log")
        ax.set_xlabel("singular value index")
    axes[0][0].set_ylabel("s_i / s_1 per class")
    handles, labels = axes[0][0].get_legend_handles_labels()
    shown = min(len(labels), 20)  # CIFAR-100 has 100 classes: name the first 20
    extra = f" (first {shown} of {len(labels)})" if shown < len(labels) else ""
    fig.tight_layout()
    fig.legend(
        handles[:shown],
        labels[:shown],
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=6,
        title=f"classes{extra}",
    )
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend sits outside the axes
    plt.close(fig)
    return path.name


def summary(out: dict) -> str:
    lines = [
        f"{out['run']} (epoch {out['checkpoint_epoch']}, {out['test_images']} test images)",
        f"  clean accuracy {out['clean']['accuracy']:.2f} %",
    ]
    for name, v in out.get("fgsm", {}).items():
        lines.append(f"  FGSM {name:<24} {v['accuracy']:6.2f} %")
    for name, v in out.get("deformations", {}).items():
        lines.append(f"  {name:<29} {v['accuracy']:6.2f} %")
    if "calibration" in out:
        lines.append(f"  ECE ({out['calibration']['bins']} bins)              {100 * out['calibration']['ece']:6.2f} %")
    for k, v in out.get("flattening", {}).items():
        if k.startswith("k"):
            lines.append(f"  flattening at {k}: top {v['mean_top']:.2f}, rest {v['mean_rest']:.2f} (class means)")
    return "\n".join(lines)
