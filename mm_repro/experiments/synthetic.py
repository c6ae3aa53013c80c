"""`python -m mm_repro synthetic task=A|B|C`: Table 8 and Figure 4 (App. A), mixing in the true generative factors.

The data and classifier follow the official repository's first commit (f14738c: `supervised/synth_data_exp.py` and
`classifier_synth.py`, read there; docs/protocol.md §5). An image is drawn from factors: a stroke of width w from
(x, y) along a top bar of length `xlen` (and a small vertical change), then down 200 px with a sideways offset, in red
on a white 256 x 256 canvas, rotated by `angle` degrees (PIL, counter-clockwise, black outside the canvas), reduced
to 64 x 64 (PIL's thumbnail) and converted to grey in [0, 1]. A short bar (xlen in [0, 20]) is class 0 (a "1"), a
long one (xlen in [40, 100]) class 1 (a "7").

Tasks (the angle is the nuisance): A and B train with the angle tied to the class (U(-70, -50) for class 0,
U(50, 80) for class 1) and test on unseen angles tied the same way (A: U(-30, -10) / U(10, 30); B: U(-30, -20) /
U(-10, 30)); C trains on either range for both classes and tests on U(-30, 30). Methods: no mixup; input mixup
(pixels of two images and their labels mixed with lam ~ U(0, 1), as the script's `random.uniform(0, 1)`); factor
mixup (the factors of the two mixed with the same lam and truncated to integers as the script does, then rendered;
the label mixed with lam). Training, as the script: fresh batches of 128 each step, 1000 steps of Adam at lr 1e-4,
BCE on the sigmoid output. The classifier: four 5 x 5 convolutions of stride 2 (32, 64, 128, 256 channels), each with
BatchNorm, LeakyReLU(0.02) after the first three, then a linear layer and a sigmoid. Reported: accuracy and BCE on a
fixed test set of `test_batches` x 128 images drawn with the seed (the script averaged over its fresh test batches).
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mm_repro.config import SyntheticConfig, quoted
from mm_repro.console import progress
from mm_repro.errors import UserError
from mm_repro.experiments.synthetic_report import BATCH, METHODS, claims, table_rows, write_report
from mm_repro.files import output_dir, read_json, write_json
from mm_repro.records.provenance import provenance, start_record
from mm_repro.records.tracking import open_tracker
from mm_repro.sweeps.study import Launch, StudyJob, failed, launch, launcher_overrides
from mm_repro.training.devices import training_device
from mm_repro.training.randomness import init_model

TASKS = {  # (train angle ranges per class, test angle ranges per class); None: the class does not set the angle
    "A": (((-70.0, -50.0), (50.0, 80.0)), ((-30.0, -10.0), (10.0, 30.0))),
    "B": (((-70.0, -50.0), (50.0, 80.0)), ((-30.0, -20.0), (-10.0, 30.0))),
    "C": (None, None),
}


def draw_factors(rng: random.Random, task: str, train: bool) -> list[float]:
    """One image's factors (x, y, bottom offset, vertical change, xlen, ylen, width, angle, label), the script's
    draws in its order."""
    xpos, ypos = rng.uniform(30.0, 150.0), rng.uniform(20.0, 50.0)
    xbot_noise, ychange_noise = rng.uniform(-30.0, 5.0), rng.uniform(-10.0, 10.0)
    ranges = TASKS[task][0 if train else 1]
    if ranges is None:  # task C: the angle is independent of the class
        if train:
            angle = rng.uniform(-70.0, -50.0) if rng.uniform(0, 1) < 0.5 else rng.uniform(50.0, 80.0)
        else:
            angle = rng.uniform(-30.0, 30.0)
        label = 0.0 if rng.uniform(0, 1) < 0.5 else 1.0
    else:
        label = 0.0 if rng.uniform(0, 1) < 0.5 else 1.0
        angle = rng.uniform(*ranges[int(label)])
    xlen = rng.uniform(0.0, 20.0) if label == 0 else rng.uniform(40.0, 100.0)
    return [xpos, ypos, xbot_noise, ychange_noise, xlen, 200.0, float(rng.randint(15, 35)), angle, label]


def render(factors: list[float]) -> np.ndarray:
    """The 64 x 64 grey image in [0, 1] of one factor setting."""
    from PIL import Image, ImageDraw

    xpos, ypos, xbot, ychange, xlen, ylen, width, angle, _ = factors
    image = Image.new("RGBA", (256, 256), (255, 255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.line([(xpos, ypos), (xpos + xlen, ypos + ychange)], fill="red", width=int(width))
    draw.line([(xpos + xlen, ypos + ychange), (xpos + xlen + xbot, ypos + ylen)], fill="red", width=int(width))
    image = image.rotate(angle)
    image.thumbnail((64, 64))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def mix_factors(a: list[float], b: list[float], lam: float) -> list[float]:
    """Factor mixup, as the script: each factor lam * a + (1 - lam) * b, truncated to an integer."""
    return [float(int(lam * x + (1 - lam) * y)) for x, y in zip(a, b, strict=True)]


def make_batch(rng: random.Random, task: str, train: bool, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = [], []
    for _ in range(BATCH):
        lam = rng.uniform(0.0, 1.0)  # drawn for every image, as the script's mixup_func
        if method == "none" or not train:
            f = draw_factors(rng, task, train)
            images.append(render(f))
            targets.append(f[-1])
            continue
        a, b = draw_factors(rng, task, True), draw_factors(rng, task, True)
        targets.append(lam * a[-1] + (1 - lam) * b[-1])
        images.append(render(mix_factors(a, b, lam)) if method == "factor" else lam * render(a) + (1 - lam) * render(b))
    return torch.from_numpy(np.stack(images)[:, None]), torch.tensor(targets, dtype=torch.float32)


class SynthClassifier(nn.Module):
    """classifier_synth.py's network: 4 x (5x5 conv, stride 2, BatchNorm), LeakyReLU(0.02) after the first three,
    a linear layer and a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(((1, 32), (32, 64), (64, 128), (128, 256))):
            layers += [nn.Conv2d(a, b, 5, stride=2, padding=2), nn.BatchNorm2d(b)]
            if i < 3:
                layers.append(nn.LeakyReLU(0.02))
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(256 * 4 * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(self.features(x).flatten(1))).squeeze(1)


def train_and_test(cfg: SyntheticConfig, method: str, seed: int, device: torch.device) -> dict:
    """Train one classifier with `method` from `seed`; its accuracy and NLL on the seed's fixed test set."""
    model = init_model(SynthClassifier, seed).to(device)  # the seed's weights; the global generator untouched
    rng = random.Random(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for _ in progress(range(cfg.steps), desc=f"task {cfg.task}, seed {seed}, {method} mixup", unit="step"):
        x, t = (v.to(device) for v in make_batch(rng, cfg.task, True, method))
        loss = F.binary_cross_entropy(model.train()(x), t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_rng = random.Random(f"test set of seed {seed}")  # the same for every method; apart from any training stream
    correct, nll, n = 0, 0.0, 0
    model.eval()
    with torch.no_grad():
        for _ in range(cfg.test_batches):
            x, t = (v.to(device) for v in make_batch(test_rng, cfg.task, False, "none"))
            p = model(x)
            correct += int(((p > 0.5).float() == t).sum())
            nll += float(F.binary_cross_entropy(p, t, reduction="sum"))
            n += len(t)
    return {"method": method, "seed": seed, "test_accuracy": 100.0 * correct / n, "test_nll": nll / n, "test_images": n}


CLASSIFIER = "classifier.json"  # one classifier's result and what made it, in its own directory
IDENTITY = ("task", "steps", "lr", "test_batches")  # with the method, the seed and the device: what a result depends on


def identity(cfg: SyntheticConfig, method: str, seed: int, device: str) -> dict:
    return {**{k: getattr(cfg, k) for k in IDENTITY}, "method": method, "seed": seed, "device": device}


def reusable(path: Path, wanted: dict) -> dict | None:
    """The classifier result at `path` when it was made as `wanted` (None when there is none); one of another
    config is refused in one line, as `train` refuses a run of another config."""
    if not path.is_file():
        return None
    saved = read_json(path)
    if saved.get("identity") != wanted:
        changed = [f"{k}: {saved.get('identity', {}).get(k)!r} -> {v!r}" for k, v in wanted.items()
                   if saved.get("identity", {}).get(k) != v]  # fmt: skip
        raise UserError(
            f"{path} holds a classifier made otherwise ({'; '.join(changed)}); move it away, or use another out="
        )
    return saved["result"]


def train_classifiers(cfg: SyntheticConfig) -> list[dict]:
    """One job of the task's sweep: the classifier of `cfg.classifier` (a method) for each seed of `cfg.seeds`, into
    cfg.out (each seed's `classifier.json`; a finished one is reused)."""
    out = output_dir(cfg.out)
    results = []
    with training_device(cfg.device, in_sweep=False) as device:
        for seed in cfg.seeds:
            path = out / (CLASSIFIER if len(cfg.seeds) == 1 else f"seed{seed}_{CLASSIFIER}")
            wanted = identity(cfg, cfg.classifier, seed, device.type)
            result = reusable(path, wanted) or train_and_test(cfg, cfg.classifier, seed, device)
            write_json(path, {"identity": wanted, "result": result})
            results.append(result)
    return results


def classifier_jobs(cfg: SyntheticConfig, out: Path) -> list[tuple[StudyJob, dict]]:
    """The task's classifiers (method x seed) as the jobs of one sweep, each with the identity its result must have."""
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    made = []
    for seed in cfg.seeds:
        for method in METHODS:
            run_dir = out / "runs" / f"task{cfg.task}" / method / f"seed{seed}"
            overrides = [f"task={cfg.task}", f"classifier={method}", f"seeds=[{seed}]", f"steps={cfg.steps}",
                         f"lr={cfg.lr}", f"test_batches={cfg.test_batches}", f"device={device}",
                         f"out={quoted(str(run_dir))}", "logger=none"]  # fmt: skip
            job = StudyJob(f"task {cfg.task}, {method} mixup, seed {seed}", run_dir, overrides, CLASSIFIER)
            made.append((job, identity(cfg, method, seed, device)))
    return made


def run_synthetic(cfg: SyntheticConfig) -> dict:
    """Table 8 for one task: its classifiers (every method, every seed) as one sweep (mm_repro.sweeps.study), then
    the table, its claims and Figure 4 into cfg.out; with `classifier=` set, one job of that sweep
    (train_classifiers)."""
    if cfg.classifier is not None:
        return {"results": train_classifiers(cfg), "rows": [], "figures": [], "claims": []}
    start = start_record()
    out = output_dir(cfg.out, make=False)
    made = classifier_jobs(cfg, out)
    todo = [job for job, wanted in made if reusable(job.run_dir / CLASSIFIER, wanted) is None]
    output_dir(out)  # made once nothing refused the task: a refused one leaves no directory
    how = Launch(cfg.launcher, cfg.workers, tuple(launcher_overrides(cfg.launcher_options)))
    if todo:
        failures = launch("synthetic", todo, out / "runs", how, f"synthetic task {cfg.task}", len(made))
        if failures:
            raise failed("classifiers", failures, len(made) - len(failures))
    results = [read_json(job.run_dir / CLASSIFIER)["result"] for job, _ in made]
    tracker = open_tracker(cfg.logger, out, asdict(cfg), f"synthetic-task{cfg.task}")
    for i, r in enumerate(results):
        tracker.log({k: r[k] for k in ("test_accuracy", "test_nll")}, step=i)
    tracker.finish(0)
    figures = [plot_examples(cfg, out)]
    made_by = {**provenance(start, torch.device(made[0][1]["device"])),
               "classifiers": f"{len(todo)} trained {how.describe()}, {len(made) - len(todo)} reused"}  # fmt: skip
    report = {"config": asdict(cfg), "provenance": made_by, "results": results, "rows": table_rows(cfg.task, results),
              "figures": figures}  # fmt: skip
    report["claims"] = claims(results)
    write_report(report, out)
    return report


def plot_examples(cfg: SyntheticConfig, out: Path) -> str:
    """Figure 4: training images, input-mixup images and factor-mixup images of the task, and test images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = random.Random(cfg.seeds[0])
    kinds = [("train images", True, "none"), ("input mixup", True, "input"), ("factor mixup", True, "factor")]
    kinds.append(("test images", False, "none"))
    fig, axes = plt.subplots(len(kinds), 8, figsize=(10, 5.4))
    for row, (title, train, method) in enumerate(kinds):
        x, t = make_batch(rng, cfg.task, train, method)
        for col in range(8):
            ax = axes[row][col]
            ax.imshow(x[col, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"y = {float(t[col]):.2f}", fontsize=7)
        axes[row][0].set_ylabel(title, fontsize=8)
    fig.suptitle(f"Figure 4: task {cfg.task} (y: the target, 1 = long top bar, a '7')", fontsize=10)
    fig.tight_layout()
    name = f"figure4_task{cfg.task}.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name
