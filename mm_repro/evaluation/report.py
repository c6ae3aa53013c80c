"""What `evaluate` shows: the figures it writes into a run directory (the reliability diagram of calibration, the
per-class singular-value spectra at each mixing point of flattening) and the summary it prints."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np


def plot_reliability(calibration: dict, path: Path, run: str = "") -> str:
    """Accuracy per confidence bin, drawn for the bins that hold test images only (an empty bin has no accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    table = calibration["table"]
    width = 1 / calibration["bins"]
    bars = ax.bar(
        [b["lower"] for b in table],
        [b["accuracy"] for b in table],
        width,
        align="edge",
        edgecolor="k",
        label="accuracy (number: test images in the bin)",
    )
    ax.bar_label(bars, labels=[str(b["count"]) for b in table], fontsize=6, padding=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    title = f"{run}: ECE = {100 * calibration['ece']:.2f} %" if run else f"ECE = {100 * calibration['ece']:.2f} %"
    ax.set_title(textwrap.fill(title, 60), fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def plot_spectra(flat: dict, path: Path, run: str = "") -> str:
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
    if run:
        fig.suptitle(textwrap.fill(run, 40 * len(points)), fontsize=8)
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
