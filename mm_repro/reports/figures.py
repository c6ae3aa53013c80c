"""The figures `tables` draws beside its tables: Table 6 (accuracy against alpha), Table 5 (eligible layer sets),
ours with error bars beside the paper's; and Figures 6 and 7, the training loss against epochs from each run's
metrics.jsonl, mean and one-std band over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mm_repro.records.scan import Record
from mm_repro.reports.cells import LABEL_KEYS, by_setup, matches, mean_std, method_label, short_key
from mm_repro.reports.curves import loss_curve, wrap


def cell_group(row: dict, records: list[Record]) -> list[Record]:
    """The runs of one paper cell that a figure shows: its largest setup group (a figure never averages two setups;
    the tables list every group)."""
    groups: dict[str, list[Record]] = {}
    for rec in records:
        if matches(row, rec):
            groups.setdefault(rec.setup_key, []).append(rec)
    return max(sorted(groups.items()), key=lambda kv: len(kv[1]))[1] if groups else []


def final_accuracies(row: dict, records: list[Record]) -> list[float]:
    """Final-epoch test accuracies (%) of the runs of one paper cell (its largest setup group)."""
    return [100 - rec.result["final"]["test_error"] for rec in cell_group(row, records)]


def _ours_label(spec: dict, records: list[Record]) -> str:
    """The setup of the runs a figure shows (protocol, epochs, width, precision) and their numbers per cell."""
    shown = [g for row in spec["rows"] if (g := cell_group(row, records))]
    if not shown:
        return "ours: no complete runs"
    keys = [k for k in LABEL_KEYS if k in shown[0][0].setup]
    setups = {", ".join(f"{short_key(k)}={g[0].setup.get(k)}" for k in keys) for g in shown}
    counts = sorted({len(g) for g in shown})
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"ours: {' | '.join(sorted(setups))}; n = {n} per cell"


def _clipped(means: list[float], stds: list[float]) -> list[list[float]]:
    """One-std error bars of accuracies, clipped to what an accuracy can be (0..100 %)."""
    return [
        [min(s, m) for m, s in zip(means, stds, strict=True)],
        [min(s, 100 - m) for m, s in zip(means, stds, strict=True)],
    ]


def _plot_alpha(ax: Any, spec: dict, records: list[Record]) -> None:
    for method, colour in (("mixup", "tab:blue"), ("manifold", "tab:red")):
        rows = [r for r in spec["rows"] if r["method"] == method]
        label = method_label({"method": method})
        paper = [r["test_accuracy"][0] for r in rows]
        ax.plot([r["alpha"] for r in rows], paper, "o--", color=colour, alpha=0.5, label=f"{label} (paper)")
        ours = [(r["alpha"], mean_std(accs)) for r in rows if (accs := final_accuracies(r, records))]
        if ours:
            ax.errorbar(
                [a for a, _ in ours],
                [m for _, (m, _, _) in ours],
                yerr=_clipped([m for _, (m, _, _) in ours], [sd or 0.0 for _, (_, sd, _) in ours]),
                fmt="s-",
                color=colour,
                capsize=3,
                label=f"{label} (ours, final)",
            )
    ax.set_xlabel("α")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(wrap(f"Table 6: CIFAR-10, PreActResNet18. {_ours_label(spec, records)}", 70), fontsize=8)
    ax.legend(fontsize=7)


def _plot_layers(ax: Any, spec: dict, records: list[Record], dataset: str) -> None:
    rows = [r for r in spec["rows"] if r["dataset"] == dataset]
    x = range(len(rows))
    paper = [r["test_accuracy"][0] for r in rows]
    ax.bar([i - 0.2 for i in x], paper, 0.4, label="paper", color="0.7")
    ours = [mean_std(accs) if (accs := final_accuracies(r, records)) else (float("nan"), None, 0) for r in rows]
    ax.bar(
        [i + 0.2 for i in x],
        [o[0] for o in ours],
        0.4,
        yerr=_clipped([o[0] for o in ours], [o[1] or 0 for o in ours]),
        capsize=2,
        label="ours (final)",
        color="tab:red",
    )
    ax.set_xticks(list(x), [r["label"] for r in rows], rotation=45, fontsize=7)
    ax.set_ylim(0, 100)  # bars start at zero: a bar's height is its accuracy, never exaggerated by a cut axis
    ax.set_xlabel("eligible layers S")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(wrap(f"Table 5: {dataset}, PreActResNet18. {_ours_label({'rows': rows}, records)}", 60), fontsize=8)
    ax.legend(fontsize=7)


def _plot_training_loss(ax: Any, spec: dict, records: list[Record]) -> None:
    """Figures 6 and 7: one curve per row and setup, mean over seeds with a band of one std."""
    drawn = 0
    for row in spec["rows"]:
        groups = by_setup([r for r in records if matches(row, r)])
        for label, group in groups.items():
            label = label if len(groups) > 1 else ""
            epochs, means, stds = loss_curve(group)
            if not epochs:
                continue
            name = row.get("label", method_label(row)) + (f" [{label}]" if label else "")
            (line,) = ax.plot(epochs, means, label=f"{name} (n={len(group)})")
            low = [m - s for m, s in zip(means, stds, strict=True)]
            high = [m + s for m, s in zip(means, stds, strict=True)]
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
            drawn += 1
    from matplotlib.ticker import MaxNLocator

    if not drawn:
        ax.text(0.5, 0.5, "no complete runs of this figure", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("training loss (BCE on softmax, mixed targets)")
    shown = [r for r in records if any(matches(row, r) for row in spec["rows"])]
    common = ", ".join(f"{short_key(k)}={shown[0].setup.get(k)}" for k in LABEL_KEYS if shown) if shown else ""
    ax.set_title(
        wrap(f"{spec['title']} Ours: mean ± 1 std over seeds{'; ' + common if common else ''}", 80), fontsize=8
    )
    if drawn:
        ax.legend(fontsize=7)


def plot_figures(specs: list[dict], records: list[Record], out: Path) -> list[Path]:
    """Table 6 (accuracy against alpha) and Table 5 (eligible layer sets): ours with error bars beside the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_name = {s["table"]: s for s in specs}
    if "table6_alpha" in by_name:
        fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
        _plot_alpha(ax, by_name["table6_alpha"], records)
        written.append(out / "table6_alpha.png")
    if "table5_layers" in by_name:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
        for ax, dataset in zip(axes, ("cifar10", "cifar100"), strict=True):
            _plot_layers(ax, by_name["table5_layers"], records, dataset)
        written.append(out / "table5_layers.png")
    for spec in specs:
        if spec.get("figure") == "training_loss":
            fig, ax = plt.subplots(figsize=(7, 4.6), layout="constrained")
            _plot_training_loss(ax, spec, records)
            written.append(out / f"{spec['table']}.png")
    for path, number in zip(written, plt.get_fignums(), strict=True):
        figure = plt.figure(number)
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return written
