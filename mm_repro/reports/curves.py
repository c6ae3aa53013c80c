"""Learning curves from each run's metrics.jsonl: one figure per setup group (`curves/`), and for each cell of a sweep
the methods on one axis (`comparisons/`): test error and training loss against epoch, mean and a one-std band over
seeds, the LR milestones marked. `tables` draws both, with an index.md that says which file is which."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from mm_repro.files import atomic_write
from mm_repro.method import METHODS
from mm_repro.records.result import METHOD_KEYS
from mm_repro.records.scan import Record
from mm_repro.reports.cells import LABEL_KEYS, by_setup, mean_std, method_label, short_key


def wrap(text: str, width: int) -> str:
    """A title in lines of at most `width` characters, so that it fits its figure (never clipped at the edges)."""
    return textwrap.fill(text, width)


def loss_curve(records: list[Record], key: str = "train_loss") -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and sample std (0 for one run) of `key` (a metrics.jsonl column) over the runs, at the epochs
    every run has."""
    curves = [{r["epoch"]: r[key] for r in record.metrics if key in r} for record in records if record.metrics]
    if not curves:
        return [], [], []
    epochs = sorted(set.intersection(*(set(c) for c in curves)))
    means, stds = [], []
    for e in epochs:
        mean, std, _ = mean_std([c[e] for c in curves])
        means.append(mean)
        stds.append(std or 0.0)
    return epochs, means, stds


def draw_curve(ax: object, epochs: list[int], means: list[float], stds: list[float], n: int, label: str) -> None:
    """One mean curve on `ax`: its points marked where there are few (a 1-epoch run is one visible point, not an
    invisible line), a one-std band only over two seeds or more (one seed has no spread to draw), an x axis around
    its epochs."""
    (line,) = ax.plot(epochs, means, marker="o" if len(epochs) <= 12 else None, markersize=4, label=label)
    if n > 1 and len(epochs) == 1:  # a band one epoch wide is invisible: an error bar
        ax.errorbar(epochs, means, yerr=[min(stds[0], means[0])], color=line.get_color(), capsize=4,
                    linestyle="none", label=f"{label}: ± 1 std")  # fmt: skip
    elif n > 1:
        low = [max(m - d, 0.0) for m, d in zip(means, stds, strict=True)]
        high = [m + d for m, d in zip(means, stds, strict=True)]
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, label=f"{label}: ± 1 std")
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)


def fresh_folder(out: Path, name: str) -> Path:
    """out/name, emptied of the figures and index an earlier `tables` drew there (groups it no longer scans)."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("[0-9][0-9][0-9]-*.png"), folder / "index.md"]:
        old.unlink(missing_ok=True)
    return folder


def plot_learning_curves(records: list[Record], out: Path) -> list[Path]:
    """One figure per setup group of runs (as summary.md groups them): test error and training loss against epoch,
    mean and a one-std band over seeds; curves/index.md says which file is which group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folder = fresh_folder(out, "curves")
    written, index = [], ["| file | runs | setup | n |", "|---|---|---|---|"]
    for i, (label, group) in enumerate(by_setup(records).items()):
        run = group[0].run
        if not loss_curve(group, "test_error")[0]:  # no metrics.jsonl to draw from (a copied result.json, say)
            continue
        name = f"{i:03d}-{run['dataset']}-{run['model']}-{run['method']}.png"
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
        for ax, key, what in zip(axes, ("test_error", "train_loss"), ("test error (%)", "training loss"), strict=True):
            epochs, means, stds = loss_curve(group, key)
            what_line = f"mean over {len(group)} seeds" if len(group) > 1 else "one seed"
            draw_curve(ax, epochs, means, stds, len(group), what_line)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(what)
            ax.legend(fontsize=7)
        title = f"{run['dataset']} {run['model']} {run['method']} [{label or 'one setup'}], n = {len(group)}"
        fig.suptitle(wrap(title, 120), fontsize=9)
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        written.append(folder / name)
        index.append(f"| {name} | {run['dataset']} {run['model']} {run['method']} | {label} | {len(group)} |")
    atomic_write(folder / "index.md", ("\n".join(index) + "\n").encode())
    return written


# The keys that make a run's method: a comparison's lines differ by them, its cell by everything else.
METHOD_SETUP = ("method.name", *METHOD_KEYS)


def comparison_cells(records: list[Record]) -> dict[str, list[Record]]:
    """Runs by cell: the same setup and data but for their method keys; only cells with two methods or more."""
    cells: dict[str, list[Record]] = {}
    for record in records:
        setup = {k: v for k, v in record.setup.items() if k not in METHOD_SETUP}
        key = json.dumps({"setup": setup, "data": record.data}, sort_keys=True, default=str)
        cells.setdefault(key, []).append(record)
    return {k: v for k, v in cells.items() if len({r.setup.get("method.name") for r in v}) > 1 or len(by_setup(v)) > 1}


def _method_name(record: Record) -> str:
    run = record.run
    row = {"method": run["method"], "alpha": run.get("alpha"), "setup": {}}
    if record.setup.get("method.block_gradient"):
        row["setup"]["method.block_gradient"] = True
    name = method_label(row)
    method = METHODS.get(run["method"])
    if method and method.mixes == "hidden" and run.get("layers"):
        name += f", S = {{{', '.join(map(str, run['layers']))}}}"
    return name


def _method_rank(record: Record) -> tuple:
    run = record.run
    method = METHODS.get(run["method"])
    rank = method.rank if method else len(METHODS)  # the comparison's lines: the baseline first
    return rank, run.get("alpha") or 0.0, _method_name(record)


def plot_comparisons(records: list[Record], out: Path) -> list[Path]:
    """For each cell of a sweep, its methods on one axis: test error and training loss against epoch, mean and a
    one-std band over seeds, the LR milestones as dotted lines; comparisons/index.md names the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folder = fresh_folder(out, "comparisons")
    written, index = [], ["| file | cell | methods (n) |", "|---|---|---|"]
    for i, cell in enumerate(comparison_cells(records).values()):
        run = cell[0].run
        lines = {}
        for record in sorted(cell, key=_method_rank):
            lines.setdefault(_method_name(record), []).append(record)
        lines = {name: group for name, group in lines.items() if loss_curve(group, "test_error")[0]}
        if len(lines) < 2:
            continue
        name = f"{i:03d}-{run['dataset']}-{run['model']}.png"
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
        for ax, key, what in zip(axes, ("test_error", "train_loss"), ("test error (%)", "training loss"), strict=True):
            for label, group in lines.items():
                epochs, means, stds = loss_curve(group, key)
                draw_curve(ax, epochs, means, stds, len(group), f"{label} (n={len(group)})")
            for milestone in cell[0].setup.get("train.milestones") or []:
                ax.axvline(milestone, color="grey", linestyle=":", linewidth=1)
            ax.set_xlabel("epoch" + (" (dotted: LR x gamma)" if cell[0].setup.get("train.milestones") else ""))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(what)
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7)
        setup = cell[0].setup
        common = ", ".join(f"{short_key(k)}={setup.get(k)}" for k in LABEL_KEYS if k in setup)
        spread = "mean ± 1 std over seeds" if any(len(g) > 1 for g in lines.values()) else "one seed each"
        title = f"{run['dataset']} {run['model']}: the methods compared; {common}; {spread}"
        fig.suptitle(wrap(title, 120), fontsize=9)
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        written.append(folder / name)
        methods = ", ".join(f"{label} ({len(group)})" for label, group in lines.items())
        index.append(f"| {name} | {run['dataset']} {run['model']} {common} | {methods} |")
    atomic_write(folder / "index.md", ("\n".join(index) + "\n").encode())
    return written
