"""`python -m mm_repro evaluate run=DIR`: the paper's evaluations beyond accuracy on a trained run.

Writes `eval.json` (and PNGs) into the run directory; `tables` reads it for Tables 7 and 9.
- FGSM (Table 7): white-box, one step, x + eps * sign(grad_x loss), model in eval mode. The paper gives no eps or
  input space (paper.md 2, UNCONFIRMED), so both conventions are reported:
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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from mm_repro import records
from mm_repro.config import validate_train
from mm_repro.data import load_arrays
from mm_repro.errors import UserError
from mm_repro.losses import bce_softmax
from mm_repro.models import build
from mm_repro.train import pick_device

SUITES = ("fgsm", "deformations", "calibration", "flattening")
ROTATIONS = (20, 40, 60, 80)  # degrees
SHEARS = (0.5, 1.0, 2.0, 2.5, 3.0)  # radians: +-28.6, 57.3, 114.6, 143.2, 171.9 degrees
ZOOMS = (0.2, 0.4, 0.6, 0.8, 1.2, 1.4, 1.6, 1.8)


@dataclass
class EvalConfig:
    run: str | None = None
    suite: list[str] = field(default_factory=lambda: list(SUITES))
    device: str = "auto"
    batch_size: int = 500
    dataset_root: str | None = None  # where the run's dataset is, if not where training found it
    fgsm_eps_normalized: list[float] = field(default_factory=lambda: [0.03])
    fgsm_eps_pixel: list[float] = field(default_factory=lambda: [8 / 255])
    deformation_seed: int = 0
    ece_bins: int = 15
    flattening_max_per_class: int = 500


# ---------------------------------------------------------------- deformations (pixel space, [0, 1])


def affine(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Resample each image through its 2x2 matrix (output coords -> input coords, normalised), black outside."""
    theta = torch.cat([matrices, torch.zeros(len(images), 2, 1, device=images.device)], dim=2)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotation_matrices(degrees: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise rotation as displayed (row 0 at the top): +90 equals torch.rot90(x, 1, dims=(-2, -1))."""
    a = torch.deg2rad(degrees)
    cos, sin = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def shear_matrices(radians: torch.Tensor) -> torch.Tensor:
    """The official (Keras/torchsample) shear: [[1, -sin s], [0, cos s]]."""
    one, zero = torch.ones_like(radians), torch.zeros_like(radians)
    return torch.stack([torch.stack([one, -torch.sin(radians)], -1), torch.stack([zero, torch.cos(radians)], -1)], -2)


def zoom_matrices(z: float, n: int, device: torch.device) -> torch.Tensor:
    """Input coords = z x output coords: z < 1 zooms in on the central box, z > 1 shrinks the image (black border)."""
    return torch.eye(2, device=device).expand(n, 2, 2) * z


def deform(images: torch.Tensor, kind: str, magnitude: float, generator: torch.Generator) -> torch.Tensor:
    """One named deformation of a batch of [0, 1] images; rotation and shear angles ~ U(-magnitude, magnitude)."""
    n, device = len(images), images.device
    if kind == "zoom":
        return affine(images, zoom_matrices(magnitude, n, device))
    u = (torch.rand(n, generator=generator) * 2 - 1).to(device) * magnitude
    return affine(images, rotation_matrices(u) if kind == "rotation" else shear_matrices(u))


def deformation_names() -> list[tuple[str, str, float]]:
    return (
        [(f"rotation_{d}", "rotation", float(d)) for d in ROTATIONS]
        + [(f"shear_{s}", "shear", s) for s in SHEARS]
        + [(f"zoom_{z}", "zoom", z) for z in ZOOMS]
    )


# ---------------------------------------------------------------- calibration and flattening


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict:
    """ECE over equal-width confidence bins: sum_b n_b / N * |accuracy_b - confidence_b|, with the bins' figures."""
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    index = torch.clamp(torch.bucketize(confidence.double(), edges, right=False) - 1, 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        if count:
            acc, conf = correct[mask].mean().item(), confidence[mask].double().mean().item()
            ece += count / len(labels) * abs(acc - conf)
            table.append(
                {
                    "lower": edges[b].item(),
                    "upper": edges[b + 1].item(),
                    "count": count,
                    "accuracy": acc,
                    "confidence": conf,
                }
            )
    return {"ece": ece, "bins": bins, "table": table}


def singular_values(h: torch.Tensor) -> np.ndarray:
    """Singular values of an (n, d) matrix, largest first (via the smaller Gram matrix, in float64)."""
    h = h.double()
    gram = h @ h.T if h.shape[0] <= h.shape[1] else h.T @ h
    eig = torch.linalg.eigvalsh(gram).clamp(min=0).flip(0)
    return eig.sqrt().cpu().numpy()


def flattening(hidden: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per class: the top singular value and the sum of the rest of the flattened hidden states; and their means."""
    per_class = []
    for c in labels.unique().tolist():
        s = singular_values(hidden[labels == c].flatten(1))
        per_class.append({"class": c, "top": float(s[0]), "rest": float(s[1:].sum()), "spectrum": s[:50].tolist()})
    return {
        "per_class": per_class,
        "mean_top": float(np.mean([p["top"] for p in per_class])),
        "mean_rest": float(np.mean([p["rest"] for p in per_class])),
    }


# ---------------------------------------------------------------- the suite on a run


def _normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean) / std


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    space: str,
    mean: torch.Tensor,
    std: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """Adversarial inputs (normalised, ready for the model) for one batch of [0, 1] pixels `x`."""
    if space == "normalized":  # official attacks.py: BCE on softmax in normalised space, no clipping
        z = _normalize(x, mean, std).requires_grad_(True)
        loss = bce_softmax(model(z), F.one_hot(y, num_classes).float())
        (grad,) = torch.autograd.grad(loss, z)
        return (z + eps * grad.sign()).detach()
    p = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(_normalize(p, mean, std)), y)
    (grad,) = torch.autograd.grad(loss, p)
    return _normalize((p + eps * grad.sign()).clamp(0, 1), mean, std).detach()


def _accuracy(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return 100.0 * correct / sum(len(y) for _, y in batches)


def load_run(run_dir: Path, device: torch.device, dataset_root: str | None = None):
    """The run's validated config, its model with the checkpoint's weights (eval mode), and its test split."""
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.exists():
        raise UserError(f"run={run_dir}: no .hydra/config.yaml there; point run= at a training run directory")
    cfg = validate_train(OmegaConf.load(config_path))
    if dataset_root:
        cfg.dataset.root = dataset_root
    if not (run_dir / records.CHECKPOINT).exists():
        raise UserError(f"run={run_dir}: no checkpoints/last.pt; train the run first")
    checkpoint = records.load_checkpoint(run_dir / records.CHECKPOINT)
    model = build(cfg.model.name, cfg.dataset.num_classes, width=cfg.model.width).to(device)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    _, test = load_arrays(cfg.dataset, cfg.seed)
    return cfg, model, test, checkpoint["epoch"]


def evaluate_run(ecfg: EvalConfig) -> dict:
    """Run the suite on one run directory; writes eval.json (and PNGs) there and returns its content."""
    unknown = [s for s in ecfg.suite if s not in SUITES]
    if unknown:
        raise UserError(f"suite={unknown[0]!r} is not an evaluation; choose from {', '.join(SUITES)}")
    run_dir = Path(ecfg.run)
    device = pick_device(ecfg.device)
    cfg, model, test, epoch = load_run(run_dir, device, ecfg.dataset_root)
    mean = torch.tensor(cfg.dataset.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.dataset.std, device=device).view(1, -1, 1, 1)
    pixels = [
        (test.images[i : i + ecfg.batch_size].to(device).float() / 255, test.labels[i : i + ecfg.batch_size].to(device))
        for i in range(0, len(test.labels), ecfg.batch_size)
    ]
    clean = [(_normalize(x, mean, std), y) for x, y in pixels]
    out: dict[str, Any] = {"run": str(run_dir), "checkpoint_epoch": epoch, "test_images": len(test.labels)}
    with torch.no_grad():
        out["clean"] = {"accuracy": _accuracy(model, clean)}
    if "fgsm" in ecfg.suite:
        out["fgsm"] = {}
        for space, eps_list in (("normalized", ecfg.fgsm_eps_normalized), ("pixel", ecfg.fgsm_eps_pixel)):
            for eps in eps_list:
                adv = [(fgsm(model, x, y, eps, space, mean, std, cfg.dataset.num_classes), y) for x, y in pixels]
                with torch.no_grad():
                    out["fgsm"][f"{space}_eps{eps:g}"] = {"accuracy": _accuracy(model, adv), "eps": eps, "space": space}
    if "deformations" in ecfg.suite:
        out["deformations"] = {}
        with torch.no_grad():
            for name, kind, magnitude in deformation_names():
                g = torch.Generator().manual_seed(ecfg.deformation_seed)
                batches = [(_normalize(deform(x, kind, magnitude, g), mean, std), y) for x, y in pixels]
                out["deformations"][name] = {
                    "accuracy": _accuracy(model, batches),
                    "kind": kind,
                    "magnitude": magnitude,
                }
    if "calibration" in ecfg.suite:
        with torch.no_grad():
            probs = torch.cat([F.softmax(model(x).float(), 1) for x, _ in clean]).cpu()
        labels = torch.cat([y for _, y in clean]).cpu()
        out["calibration"] = expected_calibration_error(probs, labels, ecfg.ece_bins)
        out["calibration"]["figure"] = _plot_reliability(out["calibration"], run_dir / "reliability.png")
    if "flattening" in ecfg.suite:
        labels = test.labels
        keep = torch.cat(
            [torch.nonzero(labels == c).flatten()[: ecfg.flattening_max_per_class] for c in labels.unique()]
        )
        x = _normalize(test.images[keep].to(device).float() / 255, mean, std)
        out["flattening"] = {}
        with torch.no_grad():
            for k in model.mixing_points:
                hidden = torch.cat(
                    [
                        model.forward_until(x[i : i + ecfg.batch_size], k).cpu()
                        for i in range(0, len(x), ecfg.batch_size)
                    ]
                )
                out["flattening"][f"k{k}"] = flattening(hidden, labels[keep])
        out["flattening"]["figure"] = _plot_spectra(out["flattening"], run_dir / "flattening.png")
    records.write_json(run_dir / "eval.json", out)
    return out


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
            ax.plot(s / s[0], alpha=0.6)
        ax.set_title(f"mixing point {k[1:]}")
        ax.set_yscale("log")
        ax.set_xlabel("singular value index")
    axes[0][0].set_ylabel("s_i / s_1 per class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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
