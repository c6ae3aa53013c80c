"""`python -m mm_repro flattening study=NAME seeds=[0,1,2]`: the paper's flattening experiments on real MNIST with
fully-connected nets, on a CPU.

Reproduces: section 3.2 (5 nets: no regularization, weight decay, dropout, input mixup, manifold mixup at the first
hidden layer; the paper's largest singular value and sum of the others at that layer, averaged over classes), Figure
5 of Appendix B (the 2-D bottleneck states of the test images, trained on digits 0-4 and on all digits), and Figures
9-12 of Appendix G (the mean first singular value per class at a 12- or 30-unit bottleneck; Figure 12 over every
class together). What to expect, from the paper (its numbers: results/paper/cpu/flattening.json): manifold mixup leaves
the smallest sum of the other singular values (section 3.2) and the mixup nets a smaller first singular value than
the baseline (Figures 9-11).

Each net of a study and seed is a `train` run (the same builders, step, loop and records as `python -m mm_repro
train dataset=mnist model=mlp_...`: conf/model/mlp_*.yaml, conf/dataset/mnist.yaml, the `mlp` family's protocol),
written under `<out>/runs/<net>/seed<seed>/`, so a killed study resumes where it stopped and each net can be
evaluated and tabulated like any run. Then, per class, the singular values of the test images' hidden states at the
layer the paper uses (evaluation.measures.singular_values, float64), from the run's final checkpoint; the table
holds the mean and sample std over seeds beside the paper's numbers, and `claims` says which of the paper's
orderings hold on ours.

Training, not given by the paper (UNCONFIRMED, docs/reproducing.md): Adam at lr 1e-4 (the official historical
MNIST script's, simple_mnist_exp.py; at 1e-3 the ERM and dropout nets of section 3.2 collapse to chance within 2-3
epochs, measured), batch 100, 10 epochs, BCE on softmax (the official loss), alpha 2 for input and manifold mixup,
weight decay 1e-4 and dropout 0.5 for those nets of section 3.2, inputs normalised with MNIST's mean and std, up to
1000 test images per class in each SVD. The switches the paper's text allows: `optimizer=sgd lr=0.1`, `epochs=N`,
`svd_split=train`, `svd_per_class=N`. Runtime on this project's 2-core CPU VM (one thread, another run beside
it): 4.6-5.1 minutes per net of section3_2, about 25 minutes a seed (results/flattening/).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf, open_dict

from mm_repro.config import APPENDIX_G_FIGURES, StudyConfig, compose_train, quoted
from mm_repro.data import DeviceLoader, load_splits
from mm_repro.data.mnist import ensure_files as ensure_mnist
from mm_repro.errors import UserError
from mm_repro.evaluation.loading import finished_run
from mm_repro.evaluation.measures import singular_values
from mm_repro.experiments.flattening_report import PAPER, claims, plot_study, table_rows, write_table
from mm_repro.files import output_dir, write_json
from mm_repro.models import MLP_NETS
from mm_repro.records.chance import at_chance
from mm_repro.records.provenance import provenance, start_record
from mm_repro.records.tracking import open_tracker
from mm_repro.sweeps.study import Launch, StudyJob, failed, launch, launcher_overrides
from mm_repro.training.checks import validate_train
from mm_repro.training.ownership import completed
from mm_repro.training.run import Job

METHODS = {  # a net's method in the paper's words -> `train`'s method and the regularizer it adds
    "baseline": ("erm", {}),
    "weight_decay": ("erm", {"train.weight_decay": "weight_decay"}),
    "dropout": ("erm", {"model.dropout": "dropout"}),
    "input_mixup": ("mixup", {}),
    "manifold_mixup": ("manifold", {}),
}


@dataclass(frozen=True)
class Net:
    """One net of a study: its model (conf/model), the layer measured, its method and the digits it trains on."""

    model: str
    measured: int
    method: str  # a key of METHODS
    classes: tuple[int, ...] | None = None  # None: all ten digits
    setup: str = ""

    @property
    def slug(self) -> str:
        return f"{self.model}-{self.method}" + (f"-digits{''.join(map(str, self.classes))}" if self.classes else "")


def nets_of(study: str, figures: list[str] | tuple[str, ...] = APPENDIX_G_FIGURES) -> list[Net]:
    """The nets of a study, in the paper's order (of appendix_g, those of `figures` only)."""
    three = ("baseline", "input_mixup", "manifold_mixup")
    if study == "section3_2":
        return [Net("mlp_section3_2", 1, m, setup="784-1024-1024-1024-10") for m in METHODS]
    if study == "figure5":
        digits = (("digits 0-4", (0, 1, 2, 3, 4)), ("all digits", None))
        return [Net("mlp_figure5", 3, m, classes, name) for name, classes in digits for m in three]
    setups = {
        "figure9 (12 units after 3 layers)": "mlp_appendix_g12",
        "figure10 (30 units after 3 layers)": "mlp_appendix_g30",
        "figure11 (30 units after 1 layer)": "mlp_appendix_g30_early",
    }
    chosen = {s: model for s, model in setups.items() if s.split(" ")[0] in figures}
    return [Net(model, MLP_NETS[model][1], m, setup=s) for s, model in chosen.items() for m in three]


def net_job(net: Net, cfg: StudyConfig, seed: int, out: Path) -> tuple[StudyJob, Job]:
    """The net's `train` run for `seed`: the overrides that make it (as the study's sweep launches it) and its Job."""
    method, extra = METHODS[net.method]
    overrides = [
        "dataset=mnist",
        f"dataset.root={quoted(cfg.dataset_root)}",
        f"dataset.download={cfg.download}",
        f"model={net.model}",
        f"model.width={cfg.width}",
        f"method={method}",
        f"train.epochs={cfg.epochs}",
        f"train.batch_size={cfg.batch_size}",
        f"train.lr={cfg.lr}",
        f"train.optimizer={cfg.optimizer}",
        f"seed={seed}",
        "logger=none",
        "device=cpu",
    ]
    if method != "erm":
        overrides.append(f"method.alpha={cfg.alpha}")
    overrides += [f"{key}={getattr(cfg, value)}" for key, value in extra.items()]
    if net.classes:
        overrides.append(f"dataset.classes=[{','.join(map(str, net.classes))}]")
    node = compose_train(overrides)
    with open_dict(node):
        node.experiment = None  # as a sweep's job records it (sweeps.jobs.job_from_hydra): no experiment file
    config = OmegaConf.to_container(node, resolve=True)
    run_dir = out / "runs" / net.slug / f"seed{seed}"
    job = Job(validate_train(node), run_dir, config, hydra_files={"config.yaml": OmegaConf.create(config)})
    return StudyJob(f"{net.slug}, seed {seed}", run_dir, overrides), job


def reused(job: Job, out: Path) -> dict | None:
    """The result of the net's finished run, when it was trained as the study asks now; one of another config is
    refused in one line that says what to do in the study's terms."""
    try:
        return completed(job)
    except UserError as exc:
        changed = str(exc).split("(", 1)[1].split(")", 1)[0] if "(" in str(exc) else str(exc)
        raise UserError(
            f"out={out} holds this study's nets trained otherwise ({changed}); choose another out=, or move "
            f"{out / 'runs'} away to train them anew"
        ) from None


def train_nets(cfg: StudyConfig, todo: list[StudyJob], total: int, out: Path) -> str:
    """The study's nets not yet complete (`todo`, of `total`) trained as one sweep (mm_repro.sweeps.study), in
    parallel; how the nets ran, in words."""
    how = Launch(cfg.launcher, cfg.workers, tuple(launcher_overrides(cfg.launcher_options)))
    if not todo:
        return "all reused (trained before)"
    failures = launch("train", todo, out / "runs", how, f"flattening {cfg.study}", total)
    if failures:
        raise failed("nets", failures, total - len(failures))
    reused = total - len(todo)
    return f"{len(todo)} trained {how.describe()}" + (f", {reused} reused" if reused else "")


@torch.no_grad()
def measure(run_dir: Path, net: Net, cfg: StudyConfig) -> dict[str, Any]:
    """The trained net's final test accuracy (its result.json) and, per class, the singular values of the hidden
    states of its test (or, `svd_split=train`, training) images at the measured layer, up to `svd_per_class` images
    per class."""
    finished = finished_run(run_dir)  # the one reader: the run's own finished model, or one line
    run, model = finished.cfg, finished.model()
    splits = load_splits(run.dataset, run.seed)
    images = splits.test if cfg.svd_split == "test" else splits.train
    loader = DeviceLoader(images, run.dataset, 1000, torch.device("cpu"), train=False)
    x, y = (torch.cat(parts) for parts in zip(*loader.batches(loader.order()), strict=True))
    result = finished.result
    test = result["final"]["test_error"]
    classes = sorted(set(y.tolist()))
    keep = torch.cat([torch.nonzero(y == c).flatten()[: cfg.svd_per_class] for c in classes])
    h, labels = model.forward_until(x[keep], net.measured).flatten(1), y[keep]
    per_class = [singular_values(h[labels == c]) for c in classes]
    out = {
        "test_accuracy": 100.0 - test,
        "test_images": len(splits.test.labels),
        "at_chance": at_chance(result),  # `tables`' rule: such a net is listed, never averaged
        "mean_top": float(np.mean([s[0] for s in per_class])),
        "mean_rest": float(np.mean([s[1:].sum() for s in per_class])),
        "spectra": [s[:32].tolist() for s in per_class],
        "all_classes_spectrum": singular_values(h)[:32].tolist(),
    }
    if h.shape[1] == 2:  # Figure 5's picture: up to 200 test images of each digit
        shown = torch.cat([torch.nonzero(labels == c).flatten()[:200] for c in classes])
        out["bottleneck_states"] = {"points": h[shown].tolist(), "labels": labels[shown].tolist()}
    return out


def run_study(cfg: StudyConfig) -> dict:
    """Train and measure every net of the study for every seed; write the table, JSON and figures into cfg.out."""
    start = start_record()
    out = output_dir(cfg.out, make=False)  # checked first; made once nothing refused the study
    pairs = [(net, seed) for seed in cfg.seeds for net in nets_of(cfg.study, cfg.figures)]
    ensure_mnist(Path(cfg.dataset_root), cfg.download)  # once, here: not every net failing on missing files
    made = [net_job(net, cfg, seed, out) for net, seed in pairs]
    todo = [study_job for study_job, job in made if reused(job, out) is None]  # may refuse: nothing made yet
    tracker = open_tracker(cfg.logger, output_dir(out), asdict(cfg), f"flattening-{cfg.study}")
    results = []
    try:
        trained_how = train_nets(cfg, todo, len(made), out)
        for i, (net, seed) in enumerate(pairs):
            run_dir = out / "runs" / net.slug / f"seed{seed}"
            results.append({"net": asdict(net), "seed": seed, "run": str(run_dir), **measure(run_dir, net, cfg)})
            tracker.log({"test_accuracy": results[-1]["test_accuracy"], "mean_top": results[-1]["mean_top"]}, step=i)
        report = {
            "study": cfg.study,
            "config": asdict(cfg),
            "provenance": {**provenance(start, torch.device("cpu")), "nets": trained_how},
            "results": results,
            "paper": PAPER[cfg.study],
        }
        report["rows"] = table_rows(report)
        report["claims"] = claims(report)
        report["figures"] = plot_study(report, out)
        write_table(report, out)
        write_json(out / f"flattening_{cfg.study}.json", report)
        tracker.summary({"rows": report["rows"]})
    finally:
        tracker.finish(0 if results else 1)
    return report
