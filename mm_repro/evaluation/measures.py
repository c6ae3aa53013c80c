"""The measures behind `evaluate`, as functions of tensors: novel deformations (Tables 4 and 9), FGSM (Table 7) and
PGD (App. D), k-NN on features, expected calibration error, and per-class singular values of hidden states
(section 3's flattening).

- Deformations: rotation by U(-d, d) degrees, shear by U(-s, s) radians (the Keras/torchsample matrix
  [[1, -sin s], [0, cos s]] of the official `affine_transforms.py`), zoom by z (z < 1 zooms in on a central box of
  z x size, z > 1 shrinks the image); one bilinear `grid_sample` per batch, black fill in pixel space (where the
  official loader filled is UNCONFIRMED, docs/protocol.md §5), angles from a seeded generator.
- FGSM: white-box, one step, x + eps * sign(grad_x loss), in the official code's normalised space with BCE on softmax
  and no clipping, or in pixel space with cross-entropy and clipping to [0, 1] (docs/protocol.md §2: the paper gives
  neither). PGD: the same steps repeated, projected to an eps-ball (or unbounded, App. D).
- k-NN: error of a k-nearest-neighbour vote on feature vectors (the paper's k-NN result).
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


def _loss_sign(
    model: nn.Module, z: torch.Tensor, y: torch.Tensor, space: str, mean: torch.Tensor, std: torch.Tensor, n: int
) -> torch.Tensor:
    """sign(grad_z loss) at z: BCE on softmax of normalised inputs (the official attacks.py), or cross-entropy of
    pixels in [0, 1]."""
    z = z.detach().requires_grad_(True)
    if space == "normalized":
        loss = bce_softmax(model(z), F.one_hot(y, n).float())
    else:
        loss = F.cross_entropy(model(normalize(z, mean, std)), y)
    (grad,) = torch.autograd.grad(loss, z)
    return grad.sign()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    step_size: float,
    eps: float | None,
    space: str,
    mean: torch.Tensor,
    std: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """Adversarial inputs (normalised, ready for the model) for one batch of [0, 1] pixels `x`: `steps` signed-gradient
    steps of `step_size` from the clean input, each projected back into the L-inf ball of radius `eps` around it
    (None: unbounded, as the official code's old `pgd()`, which App. D runs for 200 steps of 0.01). In pixel space
    every step is also clipped to [0, 1]; in normalised space nothing is clipped, as in the official code."""
    start = normalize(x, mean, std) if space == "normalized" else x
    z = start
    for _ in range(steps):
        z = z + step_size * _loss_sign(model, z, y, space, mean, std, num_classes)
        if eps is not None:
            z = start + (z - start).clamp(-eps, eps)
        if space == "pixel":
            z = z.clamp(0, 1)
    return (z if space == "normalized" else normalize(z, mean, std)).detach()


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
    """Adversarial inputs (normalised, ready for the model) for one batch of [0, 1] pixels `x`: one step of eps,
    x + eps * sign(grad_x loss) (PGD with a single step)."""
    return pgd(model, x, y, 1, eps, None, space, mean, std, num_classes)


@torch.no_grad()
def knn_errors(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor, ks: list[int]
) -> dict[int, float]:
    """Test error (%) of k-nearest-neighbour classification for each k: Euclidean distance between feature vectors,
    an unweighted vote among the k nearest training points, ties to the smallest class (as scikit-learn's
    KNeighborsClassifier defaults). Distances for a block of test points at a time, on the features' device."""
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    wrong = dict.fromkeys(ks, 0)
    for i in range(0, len(test), 256):
        block = torch.cdist(test[i : i + 256].double(), train.double())
        nearest = block.topk(max(ks), dim=1, largest=False).indices  # nearest first
        for k in ks:
            votes = torch.zeros(len(block), classes, device=train.device)
            votes.scatter_add_(1, train_labels[nearest[:, :k]], torch.ones(len(block), k, device=train.device))
            wrong[k] += int((votes.argmax(1) != test_labels[i : i + 256]).sum())
    return {k: 100.0 * w / len(test) for k, w in wrong.items()}


@torch.no_grad()
def features_before_head(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The input of the final linear layer (the pooled features; the last hidden layer of an MLP) for every batch."""
    seen: list[torch.Tensor] = []
    final = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]  # every model registers its head last
    hook = final.register_forward_pre_hook(lambda m, args: seen.append(args[0].flatten(1)))
    try:
        for x, _ in batches:
            model(x)
    finally:
        hook.remove()
    return torch.cat(seen)
