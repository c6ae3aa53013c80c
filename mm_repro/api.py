"""mm_repro from Python: a small API beside the CLI (which stays the primary interface). docs/api.md shows each
function in use; tests/test_api.py runs those examples exactly as printed.

- `build_model(name, num_classes, ...)`: a model of the registry (`model=` names), as `train` builds it.
- `load_model(run_dir, checkpoint="last"|"best")`: a finished run's model, in eval mode, taking pixels in [0, 1]
  (normalised inside with the run's mean and std; `.net` the net as trained), and its checked config.
  Checkpoints are plain torch.save files: `torch.load(path, weights_only=True)["model"]` works too.
- `Staged(stage, stage, ...)`: any model given as its stages in order (the first takes the input, the last gives
  logits), with the mixing points manifold mixup needs (0 = the input, i = the output of stage i).
- `ManifoldMixup(alpha, layers, num_classes)`: the official mixing step for one's own training loop, on any model:
  draw k, lam and the partners, mix the hidden states at k (a module's name, through a forward hook, or a staged
  model's integer point) and the one-hot targets alike, and the loss (BCE on softmax, as the official code) on the
  mixed batch. `layers=["input"]` (or `(0,)`) is input mixup; `loss(..., return_draw=True)` also returns the draw.
- `tables(run_dirs)`: every paper table's rows and the summary's rows for a list of run directories, computed as
  `python -m mm_repro tables` computes them, without writing anything.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mm_repro.config import SEED_LIMIT, SMALLEST_ALPHA, TrainRunConfig
from mm_repro.data import image_shape
from mm_repro.errors import UserError
from mm_repro.evaluation.loading import finished_run
from mm_repro.method import mixing
from mm_repro.method.losses import LOSSES
from mm_repro.method.points import check_points
from mm_repro.models import build as build_model
from mm_repro.models.normalized import Normalized
from mm_repro.records.scan import scan
from mm_repro.reports.cells import load_specs
from mm_repro.reports.summary import summary_rows
from mm_repro.reports.tables import build_rows, check_runs
from mm_repro.training.step import MixedForward, one_hot

__all__ = ["ManifoldMixup", "Staged", "build_model", "load_model", "tables"]


def load_model(run_dir: str | Path, checkpoint: str = "last") -> tuple[Normalized, TrainRunConfig]:
    """The model of a finished run (`checkpoint`: "last", the final epoch's weights, or "best", the best test
    error's, when result.json names best.pt as that epoch's model) in eval mode on the CPU, and the run's config. The
    model takes pixels in [0, 1], (N, C, H, W) of the run's image shape (`model.image_shape`), and normalises them
    with the run's mean and std inside, as training did; `model.net` is the net as trained (normalised input,
    forward_until / forward_from). It is checked as `evaluate` checks it (evaluation.loading.finished_run): a run still
    training, stopped, failed, or whose checkpoint is not the one its result.json names is one line (a UserError),
    never a model."""
    run = finished_run(run_dir, checkpoint)
    d = run.cfg.dataset
    return Normalized(run.model("cpu"), d.mean, d.std, image_shape(d)).eval(), run.cfg


class Staged(nn.Module):
    """A model given as its stages, in order: `forward_until(x, k)` runs the first k, `forward_from(h, k)` the rest,
    so that manifold mixup can mix at any point between two stages (0: the input)."""

    def __init__(self, *stages: nn.Module) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)

    @property
    def mixing_points(self) -> tuple[int, ...]:
        return tuple(range(len(self.stages)))

    def forward_until(self, x: torch.Tensor, k: int) -> torch.Tensor:
        for stage in self.stages[:k]:
            x = stage(x)
        return x

    def forward_from(self, h: torch.Tensor, k: int) -> torch.Tensor:
        for stage in self.stages[k:]:
            h = stage(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)


class ManifoldMixup:
    """The official mixing step for one's own loop (method.mixing; training.step.MixedForward), on any model: per
    batch one mixing point k uniform over `layers`, one lam ~ Beta(alpha, alpha) and one permutation, drawn from this
    object's own streams (seeded by `seed`), in the official order; the hidden states at k and the one-hot targets
    mixed alike, gradients through both members of each pair; the loss on the soft targets (`loss`: bce_softmax, the
    official one, or soft_ce). A point is a module's name ("input", "layer1", "features.3": method.points, through a
    forward hook, on torchvision's, timm's or one's own model) or, on a model that exposes `mixing_points` (every
    mm_repro model, `Staged`), an integer. Every misuse is one line (a UserError) naming the value and what is
    allowed."""

    def __init__(
        self,
        alpha: float,
        layers: Sequence[int | str],
        num_classes: int,
        seed: int = 0,
        loss: str = "bce_softmax",
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha >= SMALLEST_ALPHA:
            raise UserError(f"alpha={alpha!r} must be a number > 0 (lam ~ Beta(alpha, alpha); the paper's: 0.1-4)")
        if loss not in LOSSES:
            raise UserError(f"loss={loss!r} is not a loss; choose one of {', '.join(LOSSES)}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise UserError(f"num_classes={num_classes!r} must be an integer >= 2")
        if isinstance(layers, str | int):
            raise UserError(f"layers={layers!r} must be a list of points, e.g. ['input', 'layer1'] or [0, 1, 2]")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
            raise UserError(f"seed={seed!r} must be an integer in 0..{SEED_LIMIT - 1}")
        self.spec = mixing.MixSpec(float(alpha), tuple(layers))
        self.num_classes, self.loss_fn = num_classes, LOSSES[loss]
        self.python, self.numpy = random.Random(seed), np.random.RandomState(seed)
        self.checked: set[int] = set()  # the models whose points were checked

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, return_draw: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict]:
        """The mixed batch's loss (backward it, then step the optimizer); with `return_draw`, also what the batch was
        mixed with, to log: {"k": the point, "lam": lam, "index": the partners (a tensor)}."""
        if id(model) not in self.checked:
            check_points(model, self.spec.layers)
            self.checked.add(id(model))
        if y.ndim != 1 or len(y) != len(x) or (len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes)):
            raise UserError(f"y must hold one label in 0..{self.num_classes - 1} per example of x ({len(x)} examples)")
        d = mixing.draw(self.spec, len(y), self.python, self.numpy)
        lam = torch.tensor(d.lam, dtype=torch.float32, device=x.device)
        index = torch.as_tensor(d.index, device=x.device)
        logits, targets = MixedForward(model)(x, one_hot(y, self.num_classes), d.k, lam, index)
        loss = self.loss_fn(logits, targets)
        return (loss, {"k": d.k, "lam": d.lam, "index": index}) if return_draw else loss


def tables(run_dirs: Sequence[str | Path], include_chance: bool = False) -> dict[str, list[dict]]:
    """Each paper table's rows (ours beside the paper's, as `tables` writes them) and, under "summary", one row per
    setup of every complete run; runs set apart (failed, repeated, stale, ...) are in no row."""
    paths = [Path(d) for d in run_dirs]
    check_runs(paths)  # as the CLI: a missing directory or a file is one line, never empty rows
    scanned = scan(paths, include_chance)
    rows = {spec["table"]: build_rows(spec, scanned.records) for spec in load_specs()}
    rows["summary"] = summary_rows(scanned.records)
    return rows
