"""What `flattening` writes: the paper's numbers (section 3.2's text; Appendix G's mean first singular values), the
table of ours beside them (mean ± sample std over seeds), which of the paper's claims hold on ours, and the figures
(Figure 5's bottleneck panels; the spectra of Figures 9-12)."""

from __future__ import annotations

import textwrap
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


def _paper(study: str, setup: str, method: str, key: str) -> float | None:
    if study == "section3_2":
        return PAPER[study].get(method, {}).get(key)
    if study == "appendix_g" and key == "top":
        return PAPER[study].get(setup, {}).get(method)
    return None


def _spread(values: list[float]) -> str:
    if not values:  # every seed of the net at chance level
        return MISSING
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def groups(report: dict) -> dict[tuple[str, str], list[dict]]:
    """The results of each net (setup, method), over its seeds, in the study's order."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in report["results"]:
        out.setdefault((r["net"]["setup"], r["net"]["method"]), []).append(r)
    return out


def trained(rs: list[dict]) -> list[dict]:
    """The seeds of a net that trained: one at chance level (`tables`' rule) is listed, never averaged."""
    return [r for r in rs if not r["at_chance"]]


def table_rows(report: dict) -> list[dict]:
    rows = []
    for (setup, method), every in groups(report).items():
        paper_top, paper_rest = (_paper(report["study"], setup, method, k) for k in ("top", "rest"))
        rs = trained(every)
        apart = len(every) - len(rs)
        rows.append(
            {
                "setup": setup,
                "method": method,
                "layer": every[0]["net"]["measured"],
                "seeds": f"{len(rs)} ({apart} at chance, not averaged)" if apart else len(rs),
                "test accuracy (%)": _spread([r["test_accuracy"] for r in rs]),
                "ours: top singular value": _spread([r["mean_top"] for r in rs]),
                "paper: top": MISSING if paper_top is None else f"{paper_top:g}",
                "ours: sum of the others": _spread([r["mean_rest"] for r in rs]),
                "paper: others": MISSING if paper_rest is None else f"{paper_rest:g}",
            }
        )
    return rows


def _order(values: dict[str, float]) -> list[str]:
    return sorted(values, key=values.get, reverse=True)


def claims(report: dict) -> list[dict]:
    """The paper's claims of this study, each with the paper's numbers, ours (means over seeds) and whether it holds
    on ours: the orderings of section 3.2 and of Figures 9-11, and the claim each study is quoted for."""
    kept = {key: trained(rs) for key, rs in groups(report).items()}
    means = {key: {m: float(np.mean([r[m] for r in rs])) for m in ("mean_top", "mean_rest")} for key, rs in
             kept.items() if rs}  # fmt: skip
    collapsed = [f"{r['net']['method']} {r['net']['setup']} seed {r['seed']}" for r in report["results"]
                 if r["at_chance"]]  # fmt: skip
    out = [  # a net that collapsed to chance (its softmax saturated) has no meaningful spectrum: not averaged
        {
            "claim": "every net trained (none at chance level: a test error within half a class of chance)",
            "paper": "(implied)",
            "ours": collapsed or "all trained",
            "holds": not collapsed,
        }
    ]
    if report["study"] == "section3_2":
        for key, word in (("top", "largest singular value"), ("rest", "sum of the other singular values")):
            ours = {method: means[(setup, method)][f"mean_{key}"] for setup, method in means}
            paper = {method: PAPER["section3_2"][method][key] for method in ours}
            out.append(
                {
                    "claim": f"the order of the methods by their {word} (largest first)",
                    "paper": _order(paper),
                    "ours": _order(ours),
                    "holds": _order(paper) == _order(ours),
                }
            )
        rest = {method: means[(setup, method)]["mean_rest"] for setup, method in means}
        out.append(
            {
                "claim": "manifold mixup leaves the smallest sum of the other singular values (it flattens most)",
                "paper": PAPER["section3_2"]["manifold_mixup"]["rest"],
                "ours": round(rest["manifold_mixup"], 2),
                "holds": min(rest, key=rest.get) == "manifold_mixup",
            }
        )
    if report["study"] == "appendix_g":
        for setup, paper in PAPER["appendix_g"].items():
            ours = {method: means[(s, method)]["mean_top"] for s, method in means if s == setup}
            if not ours:  # a figure not asked for (figures=[...])
                continue
            out.append(
                {
                    "claim": f"{setup}: the order of the mean first singular value (largest first)",
                    "paper": _order(paper),
                    "ours": _order(ours),
                    "holds": _order(paper) == _order(ours),
                }
            )
            out.append(
                {
                    "claim": f"{setup}: both mixups below the baseline",
                    "paper": {k: v for k, v in paper.items()},
                    "ours": {k: round(v, 2) for k, v in ours.items()},
                    "holds": max(ours, key=ours.get) == "baseline",
                }
            )
    return out


# how the note under the table names the nets' optimizer (flattening optimizer=)
OPTIMIZERS = {"adam": "Adam", "sgd": "SGD with Nesterov momentum 0.9"}


def write_table(report: dict, out: Path) -> None:
    c, made = report["config"], report["provenance"]
    seeds = ", ".join(map(str, c["seeds"]))
    note = (
        f"Ours: mean ± sample std over seeds {seeds}; {c['epochs']} epochs of {OPTIMIZERS[c['optimizer']]} (lr "
        f"{c['lr']}, batch {c['batch_size']}) on the real MNIST; per class, the singular values of the hidden states "
        f"of up to {c['svd_per_class']} {c['svd_split']} images at the layer shown, averaged over the classes. The "
        "paper's own training is not stated (docs/reproducing.md, 'Protocols'). "
        f"`{made['command']}` on {made['device']}, torch {made['torch_version']}, {made['wall_seconds'] / 60:.1f} min, "
        f"commit {made['git_commit']}."
    )
    if report["claims"]:
        note += "\n\nThe paper's claims on ours:\n\n" + "\n".join(
            f"- {'holds' if c['holds'] else 'does not hold'}: {c['claim']} (paper: {c['paper']}; ours: {c['ours']})"
            for c in report["claims"]
        )
    writer.write_table(
        out / f"flattening_{report['study']}", f"Flattening study `{report['study']}`", note, report["rows"]
    )


def plot_study(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [r for r in report["results"] if r["seed"] == report["config"]["seeds"][0]]  # a picture: one seed
    split = report["config"]["svd_split"]  # whose hidden states: test or training images
    setups = list(dict.fromkeys(r["net"]["setup"] for r in first))
    name = f"flattening_{report['study']}.png"
    if report["study"] == "figure5":
        methods = list(dict.fromkeys(r["net"]["method"] for r in first))
        fig, axes = plt.subplots(
            len(setups),
            len(methods),
            figsize=(4 * len(methods), 3.6 * len(setups)),
            squeeze=False,
            layout="constrained",
        )
        for r in first:
            ax = axes[setups.index(r["net"]["setup"])][methods.index(r["net"]["method"])]
            points = np.asarray(r["bottleneck_states"]["points"])
            shown = ax.scatter(*points.T, c=r["bottleneck_states"]["labels"], cmap="tab10", vmin=0, vmax=9, s=3)
            ax.set_title(f"{r['net']['method']}, {r['net']['setup']}" + (" (at chance)" * r["at_chance"]), fontsize=9)
            ax.set_xlabel("bottleneck unit 1")
            ax.set_ylabel("bottleneck unit 2")
        fig.colorbar(shown, ax=axes, label="digit", ticks=range(10))
        fig.suptitle(f"Figure 5: 2-D bottleneck states of MNIST {split} images (seed {first[0]['seed']})", fontsize=10)
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        return [name]
    results = report["results"]
    twelve = [s for s in setups if s.startswith("figure9")]  # Figure 12: one SVD over every class of Figure 9's nets
    panels = setups + (["figure12 (all classes, 12 units)"] if report["study"] == "appendix_g" and twelve else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False, layout="constrained")
    for ax, panel in zip(axes[0], panels, strict=True):
        every = panel.startswith("figure12")
        source = twelve[0] if every else panel
        methods = dict.fromkeys(r["net"]["method"] for r in results if r["net"]["setup"] == source)
        for method in methods:
            rs = trained([r for r in results if r["net"]["setup"] == source and r["net"]["method"] == method])
            if not rs:  # every seed at chance level: no spectrum to draw
                continue
            spectra = [np.asarray(r["all_classes_spectrum"]) if every else np.mean(r["spectra"], axis=0) for r in rs]
            spectrum = np.mean(spectra, axis=0)
            ax.plot(np.arange(1, len(spectrum) + 1), spectrum, marker=".", label=f"{method} (n={len(rs)})")
        ax.set_yscale("log")
        ax.set_xlabel("singular value index")
        ax.set_ylabel("singular value" + ("" if every else " (mean over classes)"))
        ax.set_title(panel if panel else f"layer {results[0]['net']['measured']}", fontsize=9)
        ax.legend(fontsize=7)
    seeds = len(report["config"]["seeds"])
    title = (f"Flattening study {report['study']}: singular values of MNIST {split} images' hidden states, mean over "
             f"{seeds} seed(s)")  # fmt: skip
    fig.suptitle(textwrap.fill(title, int(12 * 4.2 * len(panels))), fontsize=10)  # ~12 characters an inch: it fits
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]
