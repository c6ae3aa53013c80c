"""The test figures of one epoch: error (%), NLL and, with more than 5 classes, top-5 error, of one run or of a pack,
over every image of a split, with one host sync at the end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mm_repro.training.step import autocast

TOP5_MIN_CLASSES = 6  # top-5 error is recorded for datasets with more than 5 classes (it is 0 otherwise)


@torch.no_grad()
def test_figures(
    logits_of: Callable[[torch.Tensor], torch.Tensor], loader: Any, precision: str, runs: int
) -> list[dict[str, float]]:
    """Error (%), NLL (mean cross-entropy) and, with more than 5 classes, top-5 error (%) of `runs` models whose logits
    for a batch `logits_of` gives as (runs, batch, classes), over every image of `loader`; one host sync at the end.
    A single run and a pack evaluate through this alone."""
    device = loader.labels.device
    wrong = torch.zeros(runs, device=device)
    wrong5 = torch.zeros(runs, device=device)
    nll = torch.zeros(runs, device=device, dtype=torch.float64)
    top5 = False
    for x, y in loader.batches(loader.order()):
        with autocast(device, precision):
            logits = logits_of(x).float()
        wrong += (logits.argmax(2) != y).sum(1)
        if logits.shape[2] >= TOP5_MIN_CLASSES:
            top5 = True
            wrong5 += (~(logits.topk(5, dim=2).indices == y[None, :, None]).any(2)).sum(1)
        nll += F.cross_entropy(logits.transpose(1, 2), y.expand(runs, -1), reduction="none").double().sum(1)
    n = loader.num_images
    out = [{"error": 100.0 * w / n, "nll": v / n} for w, v in zip(wrong.tolist(), nll.tolist(), strict=True)]
    if top5:
        for figures, w5 in zip(out, wrong5.tolist(), strict=True):
            figures["top5_error"] = 100.0 * w5 / n
    return out


class Evaluator:
    """Test error (%) and test NLL of one model, in the run's precision and memory format (the loader's), compiled
    when the run is."""

    def __init__(self, model: nn.Module, precision: str, compiled: Callable[[nn.Module], Any] | None = None) -> None:
        self.model, self.precision = model, precision
        self.forward = compiled(model) if compiled else model

    def __call__(self, loader: Any) -> dict[str, float]:
        self.model.eval()
        try:
            return test_figures(lambda x: self.forward(x)[None], loader, self.precision, 1)[0]
        finally:
            self.model.train()
