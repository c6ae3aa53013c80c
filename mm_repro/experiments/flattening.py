"""`python -m mm_repro flattening study=NAME`: the paper's flattening experiments on MNIST with fully-connected nets,
on a CPU (mm_repro.models.mlp). Each study trains its nets from the same seed and data, then takes, per class, the
singular values of the hidden states of the test images at the layer the paper uses (measures.singular_values, in
float64), and writes a table beside the paper's numbers (`flattening_<study>.md/.csv`, `.json`) and its figures.

Studies (the paper's sizes where it gives them; the rest is our choice, README "Protocols"):
- `section3_2`: 784-1024-1024-1024-10, LeakyReLU; no regularization, weight decay, dropout, input mixup, manifold
  mixup (mixing at the first hidden layer, where the singular values are taken). Paper: the largest singular value
  and the sum of the others, averaged over classes.
- `figure5` (App. B): 784-1024-1024-2-1024-1024-10, a linear 2-D bottleneck, manifold mixup there; trained on digits
  0-4 (top row) and on all digits (bottom row); the bottleneck states of the test images, No Mixup / IM / MM.
- `appendix_g` (Figures 9-12): 3 x 1024, a 12- or 30-unit bottleneck, 4 x 1024 (Figures 9, 10), or 1024, 30, 4 x 1024
  (Figure 11); manifold mixup at the bottleneck, alpha 2; the mean first singular value per class at the bottleneck;
  Figure 12: one SVD over every class together (the 12-unit nets).

Training, not given by the paper (UNCONFIRMED): Adam, lr 1e-3, batch 100, BCE on softmax (as the official code),
`epochs` epochs; weight decay 1e-4; dropout 0.5 after each hidden layer but the bottleneck; alpha 2.
`data=generated` trains on random images of MNIST's shape (for timing the study; never a result).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm_repro.config import FLATTENING_STUDIES, StudyConfig
from mm_repro.console import progress
from mm_repro.data import mnist
from mm_repro.errors import UserError
from mm_repro.evaluation.measures import singular_values
from mm_repro.experiments.flattening_report import PAPER, plot_study, table_rows, write_table
from mm_repro.files import write_json
from mm_repro.method.losses import LOSSES
from mm_repro.method.mixing import MixSpec
from mm_repro.models.mlp import MLP
from mm_repro.records.tracking import open_tracker
from mm_repro.training.randomness import RunRandom, init_model
from mm_repro.training.step import MixedForward, TrainStep

STUDIES = FLATTENING_STUDIES
H = 1024


@dataclass(frozen=True)
class Net:
    """One net of a study: its name, widths, bottleneck, the layer measured, its method and its classes."""

    name: str
    widths: tuple[int, ...]
    bottleneck: int | None
    measured: int
    method: str  # baseline | weight_decay | dropout | input_mixup | manifold_mixup
    classes: tuple[int, ...] = tuple(range(10))
    setup: str = ""


def nets_of(study: str) -> list[Net]:
    methods = ("baseline", "input_mixup", "manifold_mixup")
    if study == "section3_2":
        five = ("baseline", "weight_decay", "dropout", "input_mixup", "manifold_mixup")
        return [Net(m, (H, H, H), None, 1, m) for m in five]
    if study == "figure5":
        return [
            Net(f"{m} {name}", (H, H, 2, H, H), 3, 3, m, classes, name)
            for name, classes in (("digits 0-4", tuple(range(5))), ("all digits", tuple(range(10))))
            for m in methods
        ]
    setups = {
        "figure9 (12 units after 3 layers)": ((H, H, H, 12, H, H, H, H), 4),
        "figure10 (30 units after 3 layers)": ((H, H, H, 30, H, H, H, H), 4),
        "figure11 (30 units after 1 layer)": ((H, 30, H, H, H, H), 2),
    }
    return [Net(f"{m} {s}", w, b, b, m, setup=s) for s, (w, b) in setups.items() for m in methods]


def load_data(cfg: StudyConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and test images as float [0, 1] (N, 784) and their labels."""
    if cfg.data == "generated":
        g = torch.Generator().manual_seed(cfg.seed)
        make = lambda n: (torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g))
        return (*make(60000), *make(10000))
    if cfg.data != "mnist":
        raise UserError(f"data={cfg.data!r} is not allowed; choose mnist or generated (random images, for timing)")
    root = Path(cfg.dataset_root)
    mnist.ensure_files(root, cfg.download)
    train, test = mnist.read_mnist(root)
    return (train.images.flatten(1).float() / 255, train.labels, test.images.flatten(1).float() / 255, test.labels)


def train_net(net: Net, cfg: StudyConfig, x: torch.Tensor, y: torch.Tensor) -> MLP:
    """Adam on BCE of softmax; input mixup mixes at 0, manifold mixup at the measured layer (the bottleneck)."""
    keep = torch.isin(y, torch.tensor(net.classes))
    x, y = x[keep], y[keep]
    dropout = cfg.dropout if net.method == "dropout" else 0.0
    model = init_model(lambda: MLP(784, list(net.widths), 10, net.bottleneck, dropout=dropout), cfg.seed)
    rng = RunRandom(cfg.seed, torch.device("cpu"))
    decay = cfg.weight_decay if net.method == "weight_decay" else 0.0
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=decay)
    layers = {"input_mixup": (0,), "manifold_mixup": (net.measured,)}.get(net.method)
    spec = MixSpec(cfg.alpha, layers) if layers else None
    step = TrainStep(MixedForward(model), optimizer, LOSSES["bce_softmax"], 10, spec, "fp32", rng)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=rng.torch)
        for i in range(0, len(y) - 1, cfg.batch_size):  # a batch of one cannot be mixed
            idx = order[i : i + cfg.batch_size]
            if len(idx) > 1:
                step.step(x[idx], y[idx])
    return model.eval()


@torch.no_grad()
def measure(model: MLP, net: Net, cfg: StudyConfig, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    keep = torch.cat([torch.nonzero(y == c).flatten()[: cfg.svd_per_class] for c in net.classes])
    h = model.forward_until(x[keep], net.measured)
    labels = y[keep]
    per_class = [singular_values(h[labels == c]) for c in net.classes]
    accuracy = float((model(x[torch.isin(y, torch.tensor(net.classes))]).argmax(1) == y[torch.isin(
        y, torch.tensor(net.classes))]).float().mean() * 100)  # fmt: skip
    out = {
        "net": asdict(net),
        "test_accuracy": accuracy,
        "mean_top": float(np.mean([s[0] for s in per_class])),
        "mean_rest": float(np.mean([s[1:].sum() for s in per_class])),
        "spectra": [s[:32].tolist() for s in per_class],
        "all_classes_spectrum": singular_values(h)[:32].tolist(),
    }
    if h.shape[1] == 2:
        out["bottleneck_states"] = {"points": h[:2000].tolist(), "labels": labels[:2000].tolist()}
    return out


def run_study(cfg: StudyConfig) -> dict:
    """Train and measure every net of the study; write the table, JSON and figures into cfg.out."""

    x, y, xt, yt = load_data(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tracker = open_tracker(cfg.logger, out, json.loads(json.dumps(asdict(cfg))), f"flattening-{cfg.study}")
    results = []
    try:
        for i, net in enumerate(bar := progress(nets_of(cfg.study), desc=f"flattening {cfg.study}", unit="net")):
            bar.set_postfix_str(net.name)
            result = measure(train_net(net, cfg, x, y), net, cfg, xt, yt)
            results.append(result)
            tracker.log({"test_accuracy": result["test_accuracy"], "mean_top": result["mean_top"]}, step=i)
        report = {
            "study": cfg.study,
            "config": asdict(cfg),
            "generated_data": cfg.data == "generated",
            "results": results,
            "paper": PAPER[cfg.study],
        }
        report["rows"] = table_rows(report)
        report["figures"] = plot_study(report, out)
        write_table(report, out)
        write_json(out / f"flattening_{cfg.study}.json", report)
        tracker.summary({"rows": report["rows"]})
    finally:
        tracker.finish(0 if results else 1)
    return report
