"""What `flattening` writes: the paper's numbers (section 3.2's text; Appendix G's mean first singular values), the
table of ours beside them (mean ± sample std over seeds), which of the paper's claims hold on ours, and the figures
(Figure 5's bottleneck panels; the spectra of Figures 9-12)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from mm_repro.config import paper_numbers
from mm_repro.data.mnist import TEST_IMAGES_PER_DIGIT
from mm_repro.files import write_json
from mm_repro.records.chance import chance_level
from mm_repro.reports import verdicts, writer
from mm_repro.reports.cells import spread

# The paper's numbers (results/paper/cpu/flattening.json): section 3.2, per method (largest singular value, sum of the
# others); Appendix G, the mean first singular value per figure (Figure 12 and Figure 5 print none).
_NUMBERS = paper_numbers("flattening")
PAPER: dict[str, dict] = {
    study: {key: value for key, value in _NUMBERS[study].items() if isinstance(value, dict)}
    for study in ("section3_2", "figure5", "appendix_g")
}
MISSING = "—"


def _paper(study: str, setup: str, method: str, key: str) -> float | None:
    if study == "section3_2":
        return PAPER[study].get(method, {}).get(key)
    if study == "appendix_g" and key == "top":
        return PAPER[study].get(setup, {}).get(method)
    return None


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
                "test accuracy (%)": spread([r["test_accuracy"] for r in rs]),
                "ours: top singular value": spread([r["mean_top"] for r in rs]),
                "paper: top": MISSING if paper_top is None else f"{paper_top:g}",
                "ours: sum of the others": spread([r["mean_rest"] for r in rs]),
                "paper: others": MISSING if paper_rest is None else f"{paper_rest:g}",
            }
        )
    return rows


def _order(values: dict[str, float]) -> list[str]:
    return sorted(values, key=values.get, reverse=True)


def by_seed(report: dict, setup: str, key: str) -> dict[str, dict[int, float]]:
    """Each method's `key` (mean_top, mean_rest) by seed, over the seeds that trained (a net at chance is left out)."""
    return {
        method: {r["seed"]: r[key] for r in trained(rs)} for (s, method), rs in groups(report).items() if s == setup
    }


def claims(report: dict) -> list[dict]:
    """The paper's claims of this study, each decided on our seeds by the one rule (reports.verdicts): section 3.2's
    orders and its headline (manifold mixup flattens most), Figure 5's (manifold mixup concentrates each class most)
    and Figures 9-11's (the order of the first singular value; both mixups below the baseline)."""
    setups = list(dict.fromkeys(setup for setup, _ in groups(report)))
    out = []
    if report["study"] == "section3_2":
        (setup,) = setups
        paper = PAPER["section3_2"]
        for key, word in (("top", "largest singular value"), ("rest", "sum of the other singular values")):
            ranked = _order({m: v[key] for m, v in paper.items()})
            out.append(verdicts.order(f"the order of the methods by their {word}, largest first", ranked,
                                      by_seed(report, setup, f"mean_{key}"), paper=ranked))  # fmt: skip
        out.append(
            verdicts.smallest(
                "manifold mixup leaves the smallest sum of the other singular values (it flattens most)",
                "manifold_mixup",
                by_seed(report, setup, "mean_rest"),
                paper=paper["manifold_mixup"]["rest"],
            )
        )
    if report["study"] == "figure5":
        for setup in setups:
            out.append(
                verdicts.smallest(
                    f"{setup}: manifold mixup concentrates each class most (the smallest per-class sum of the "
                    "bottleneck's singular values after the first)",
                    "manifold_mixup",
                    by_seed(report, setup, "mean_rest"),
                    paper="(Figure 5's picture; no number)",
                )
            )
    if report["study"] == "appendix_g":
        for setup in setups:
            paper = PAPER["appendix_g"].get(setup)
            values = by_seed(report, setup, "mean_top")
            if paper is None:
                continue
            out.append(verdicts.order(f"{setup}: the order of the mean first singular value, largest first",
                                      _order(paper), values, paper=_order(paper)))  # fmt: skip
            out.append(
                verdicts.all_below(
                    f"{setup}: both mixups below the baseline",
                    ["input_mixup", "manifold_mixup"],
                    "baseline",
                    values,
                    paper=dict(paper),
                )
            )
    return out


def at_chance_nets(report: dict) -> list[str]:
    """The nets (and seeds) at chance: listed in the table and the note, never averaged or tested."""
    return [f"{r['net']['method']} {r['net']['setup']} seed {r['seed']}".replace("  ", " ") for r in report["results"]
            if r["at_chance"]]  # fmt: skip


def rejudge(report: dict, out: Path) -> dict:
    """A study's report judged again by today's rules, from the per-seed numbers it holds (nothing retrained): chance
    by the binomial rule (records.scan.chance_level) over each net's test images (for a report that did not record
    them, the official MNIST test set's count for the net's digits), the table's rows and the claims by
    reports.verdicts. Its table (md, csv), figure and JSON are rewritten."""
    for r in report["results"]:
        digits = r["net"].get("classes") or range(10)
        r.setdefault("test_images", sum(TEST_IMAGES_PER_DIGIT[d] for d in digits))
        r["at_chance"] = chance_level(r["test_accuracy"], len(digits), r["test_images"])
    report["rows"] = table_rows(report)
    report["claims"] = claims(report)
    report["figures"] = plot_study(report, out)
    write_table(report, out)
    write_json(out / f"flattening_{report['study']}.json", report)
    return report


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
    if made.get("nets"):
        note += f" Nets: {made['nets']}."
    chance = at_chance_nets(report)
    if chance:
        note += f" At chance (listed, never averaged or tested): {', '.join(chance)}."
    if report["claims"]:
        note += (
            f"\n\nThe paper's claims on ours ({verdicts.count(report['claims'])}; rule `{verdicts.RULE}`, "
            "docs/trust.md 'Verdicts'):\n\n" + "\n".join(f"- {verdicts.describe(c)}" for c in report["claims"])
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
