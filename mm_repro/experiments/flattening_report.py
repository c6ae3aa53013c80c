"""What `flattening` writes: the paper's numbers (section 3.2's text; Appendix G's mean first singular values), the
table of ours beside them, and the figures (Figure 5's bottleneck panels; the spectra of Figures 9-12)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mm_repro.reports import writer

# The paper's numbers, per study and method: section 3.2, (largest singular value, sum of the others); Appendix G,
# the mean first singular value per figure (Figure 12 and Figure 5 print none).
PAPER: dict[str, dict] = {
    "section3_2": {
        "baseline": {"top": 51.73, "rest": 78.67},
        "weight_decay": {"top": 33.76, "rest": 73.36},
        "dropout": {"top": 28.83, "rest": 77.47},
        "input_mixup": {"top": 33.46, "rest": 66.89},
        "manifold_mixup": {"top": 31.65, "rest": 40.98},
    },
    "figure5": {},
    "appendix_g": {
        "figure9 (12 units after 3 layers)": {"baseline": 50.08, "input_mixup": 37.17, "manifold_mixup": 43.44},
        "figure10 (30 units after 3 layers)": {"baseline": 14.68, "input_mixup": 12.49, "manifold_mixup": 14.43},
        "figure11 (30 units after 1 layer)": {"baseline": 33.64, "input_mixup": 27.60, "manifold_mixup": 24.60},
    },
}
MISSING = "—"


def _paper(study: str, setup: str, method: str, key: str) -> str:
    if study == "section3_2":
        value = PAPER[study].get(method, {}).get(key)
    elif study == "appendix_g" and key == "top":
        value = PAPER[study].get(setup, {}).get(method)
    else:
        value = None
    return MISSING if value is None else f"{value:g}"


def table_rows(report: dict) -> list[dict]:
    rows = []
    for r in report["results"]:
        net = r["net"]
        rows.append(
            {
                "setup": net["setup"] or "784-1024-1024-1024-10",
                "method": net["method"],
                "layer": net["measured"],
                "test accuracy (%)": f"{r['test_accuracy']:.2f}",
                "ours: top singular value": f"{r['mean_top']:.2f}",
                "paper: top": _paper(report["study"], net["setup"], net["method"], "top"),
                "ours: sum of the others": f"{r['mean_rest']:.2f}",
                "paper: others": _paper(report["study"], net["setup"], net["method"], "rest"),
            }
        )
    return rows


def write_table(report: dict, out: Path) -> None:
    c = report["config"]
    warning = (
        "**Generated data (random images of MNIST's shape): a timing run, not a result.**\n\n"
        if report["generated_data"]
        else ""
    )
    note = warning + (
        f"Ours: seed {c['seed']}, {c['epochs']} epochs of Adam (lr {c['lr']}, batch {c['batch_size']}); per class, the "
        f"singular values of the hidden states of up to {c['svd_per_class']} test images at the layer shown, averaged "
        "over the classes. The paper's own setup is not fully stated (README 'Protocols')."
    )
    writer.write_table(
        out / f"flattening_{report['study']}", f"Flattening study `{report['study']}`", note, report["rows"]
    )


def plot_study(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = " (generated data: not a result)" if report["generated_data"] else ""
    results = report["results"]
    setups = list(dict.fromkeys(r["net"]["setup"] for r in results))
    name = f"flattening_{report['study']}.png"
    if report["study"] == "figure5":
        methods = list(dict.fromkeys(r["net"]["method"] for r in results))
        fig, axes = plt.subplots(
            len(setups),
            len(methods),
            figsize=(4 * len(methods), 3.6 * len(setups)),
            squeeze=False,
            layout="constrained",
        )
        for r in results:
            ax = axes[setups.index(r["net"]["setup"])][methods.index(r["net"]["method"])]
            points = np.asarray(r["bottleneck_states"]["points"])
            shown = ax.scatter(*points.T, c=r["bottleneck_states"]["labels"], cmap="tab10", vmin=0, vmax=9, s=3)
            ax.set_title(f"{r['net']['method']}, {r['net']['setup']}", fontsize=9)
            ax.set_xlabel("bottleneck unit 1")
            ax.set_ylabel("bottleneck unit 2")
        fig.colorbar(shown, ax=axes, label="digit", ticks=range(10))
        fig.suptitle(f"Figure 5: 2-D bottleneck states of test images{tag}", fontsize=10)
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        return [name]
    panels = setups + (["figure12 (all classes, 12 units)"] if report["study"] == "appendix_g" else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        every = panel.startswith("figure12")
        source = setups[0] if every else panel
        for r in (r for r in results if r["net"]["setup"] == source):
            spectrum = np.asarray(r["all_classes_spectrum"]) if every else np.mean(r["spectra"], axis=0)
            ax.plot(np.arange(1, len(spectrum) + 1), spectrum, marker=".", label=r["net"]["method"])
        ax.set_yscale("log")
        ax.set_xlabel("singular value index")
        ax.set_ylabel("singular value" + ("" if every else " (mean over classes)"))
        ax.set_title(panel or f"layer {results[0]['net']['measured']}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"Flattening study {report['study']}: singular values of the hidden states{tag}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]
