"""The measures behind `evaluate`, as functions of tensors: novel deformations (Tables 4 and 9), FGSM (Table 7),
expected calibration error, and per-class singular values of hidden states (section 3's flattening).

- Deformations: rotation by U(-d, d) degrees, shear by U(-s, s) radians (the Keras/torchsample matrix
  [[1, -sin s], [0, cos s]] of the official `affine_transforms.py`), zoom by z (z < 1 zooms in on a central box of
  z x size, z > 1 shrinks the image); one bilinear `grid_sample` per batch, black fill in pixel space (where the
  official loader filled is UNCONFIRMED, docs/protocol.md §5), angles from a seeded generator.
- FGSM: white-box, one step, x + eps * sign(grad_x loss), in the official code's normalised space with BCE on softmax
  and no clipping, or in pixel space with cross-entropy and clipping to [0, 1] (docs/protocol.md §2: the paper gives
  neither).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mm_repro.method.losses import bce_softmax

ROTATIONS = (20, 40, 60, 80)  # degrees
SHEARS = (0.5, 1.0, 2.0, 2.5, 3.0)  # radians: +-28.6, 57.3, 114.6, 143.2, 171.9 degrees
ZOOMS = (0.2, 0.4, 0.6, 0.8, 1.2, 1.4, 1.6, 1.8)


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


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
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
        z = normalize(x, mean, std).requires_grad_(True)
        loss = bce_softmax(model(z), F.one_hot(y, num_classes).float())
        (grad,) = torch.autograd.grad(loss, z)
        return (z + eps * grad.sign()).detach()
    p = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(normalize(p, mean, std)), y)
    (grad,) = torch.autograd.grad(loss, p)
    return normalize((p + eps * grad.sign()).clamp(0, 1), mean, std).detach()
