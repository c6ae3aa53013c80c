"""`python -m mm_repro tables runs=DIR out=DIR`: the paper's tables regenerated from run records, ours beside theirs.

Run directories are read and sorted by outcome in mm_repro.records.scan: only complete runs enter the cells, each once;
failed, diverged, at-chance, repeated, stale, incomplete and malformed ones are listed, with their counts, under every
table. Runs are grouped by the cell they reproduce (dataset, model, method, alpha, eligible layers) and by their whole
setup (every key of the resolved config that can change a number, records.setup_of), so runs of two setups are never
averaged together, and the table names what tells the groups of a cell apart. For each group: mean, sample std (ddof=1)
and n over seeds, for the final epoch and the best epoch (the official code reported the best test accuracy over epochs,
docs/protocol.md §4), and the distance to the paper's mean in units of the paper's std. Paper numbers:
results/paper/<table>.json (the paper's numbers)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from mm_repro.config import PAPER_DIR
from mm_repro.records.scan import Record, Scan, scan

# Shown in every row's setup label; any other key that differs between the groups of a cell is shown too.
LABEL_KEYS = ("protocol.name", "train.epochs", "model.width", "train.precision")
MODEL_NAMES = {"preactresnet18": "PreActResNet18", "preactresnet34": "PreActResNet34", "wrn28_10": "Wide-ResNet-28-10"}
MISSING = "—"


def mean_std(values: list[float]) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation (None for n = 1) and n."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std, n


def _lookup(d: dict | None, path: str) -> float | None:
    for part in path.split("/"):  # "/" because names such as shear_0.5 hold dots
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return float(d) if isinstance(d, int | float) else None


def metric_values(record: Record, metric: dict, row: dict) -> tuple[float | None, float | None]:
    """(final, best) value of one metric for one run; best is None for evaluation metrics."""
    name = metric["name"]
    if "eval" in metric:
        return _lookup(record.eval, metric["eval"].format(**row)), None
    if name == "test_accuracy":
        return 100 - record.result["final"]["test_error"], 100 - record.result["best"]["test_error"]
    return record.result["final"][name], record.result["best"][name]


def matches(row: dict, run: dict) -> bool:
    """Does a run reproduce this paper cell? Cited rows (other papers) match nothing."""
    if "cited" in row:
        return False
    if (row["dataset"], row["model"], row["method"]) != (run.get("dataset"), run.get("model"), run.get("method")):
        return False
    if row["method"] != "erm" and row.get("alpha") is not None and run.get("alpha") != row["alpha"]:
        return False
    return not ("layers" in row and row["method"] != "erm" and sorted(run.get("layers") or []) != sorted(row["layers"]))


def setup_labels(setups: list[dict]) -> list[str]:
    """A short label per setup: the LABEL_KEYS, and every key whose value differs between the setups."""
    keys = set().union(*setups) if setups else set()
    differing = sorted(k for k in keys if len({json.dumps(s.get(k), default=str) for s in setups}) > 1)
    shown = [k for k in LABEL_KEYS if k in keys] + [k for k in differing if k not in LABEL_KEYS]
    return [", ".join(f"{k.split('.')[-1]}={s.get(k)}" for k in shown if s.get(k) is not None) for s in setups]


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return MISSING
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def method_label(row: dict) -> str:
    names = {"erm": "No Mixup", "mixup": "Input Mixup", "manifold": "Manifold Mixup"}
    if row["method"] not in names:
        return row["method"]
    alpha = f" (α = {row['alpha']:g})" if row.get("alpha") is not None and row["method"] != "erm" else ""
    return names[row["method"]] + alpha


def build_rows(spec: dict, records: list[Record]) -> list[dict]:
    """One output row per paper cell and setup of our runs; a cell without runs gets one 'missing' row."""
    out = []
    for row in spec["rows"]:
        by_setup: dict[str, list[Record]] = {}
        for record in records:
            if matches(row, record.run):
                by_setup.setdefault(record.setup_key, []).append(record)
        labels = setup_labels(
            [{**g[0].setup, **{f"data.{k}": v for k, v in g[0].data.items()}} for g in by_setup.values()]
        )
        groups = dict(zip(labels, by_setup.values(), strict=True))
        if len(groups) < len(by_setup):  # two setups whose labels coincide: tell them apart by their keys
            groups = {
                f"{label} [{i + 1}]": g for i, (label, g) in enumerate(zip(labels, by_setup.values(), strict=True))
            }
        base = {
            "dataset": row["dataset"],
            "arch": MODEL_NAMES.get(row["model"], row["model"]),
            "method": method_label(row),
        }
        if "label" in row:
            base["cell"] = row["label"]
        for setup, group in sorted(groups.items()) or [("", [])]:
            line = {**base, "setup": setup or ("cited" if "cited" in row else "missing"), "n": len(group)}
            for metric in spec["metrics"]:
                digits = 3 if "nll" in metric["name"] else 2
                paper = row.get(metric["name"]) or [None, None]
                line[f"paper {metric['name']}"] = (  # as printed in the paper
                    MISSING if paper[0] is None else f"{paper[0]:g}" + (f" ± {paper[1]:g}" if paper[1] else "")
                )
                finals = [v for v in (metric_values(r, metric, row)[0] for r in group) if v is not None]
                bests = [v for v in (metric_values(r, metric, row)[1] for r in group) if v is not None]
                f_mean, f_std, _ = mean_std(finals) if finals else (None, None, 0)
                b_mean, b_std, _ = mean_std(bests) if bests else (None, None, 0)
                line[f"ours {metric['name']} (final)"] = _fmt(f_mean, f_std, digits)
                if "eval" not in metric:
                    line[f"ours {metric['name']} (best)"] = _fmt(b_mean, b_std, digits)
                sigma = (f_mean - paper[0]) / paper[1] if f_mean is not None and paper[1] else None
                line[f"Δ/σ {metric['name']}"] = f"{sigma:+.1f}" if sigma is not None else MISSING
            out.append(line)
    return out


def to_markdown(spec: dict, rows: list[dict], scanned: Scan) -> str:
    columns = list(rows[0])
    lines = [
        f"## {spec['title']}",
        "",
        f"Paper caption: {spec['caption']}",
        "",
        f"Paper protocol: {spec['protocol']}",
        "",
        "Ours: mean ± sample std over seeds (n runs) per setup; 'final' is the last epoch, 'best' the best test "
        "epoch (what the official code reported); Δ/σ = (ours final − paper) / paper std.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    for title, entries in scanned.apart():
        if entries:
            lines += ["", f"{title}: {len(entries)}", *[f"- {p}" for p in entries]]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_latex(spec: dict, rows: list[dict]) -> str:
    def esc(text: Any) -> str:
        text = str(text).replace("\\", r"\textbackslash{}")
        for a, b in (
            ("&", r"\&"),
            ("%", r"\%"),
            ("_", r"\_"),
            ("#", r"\#"),
            ("±", r"$\pm$"),
            ("α", r"$\alpha$"),
            ("Δ", r"$\Delta$"),
            ("σ", r"$\sigma$"),
            ("—", "--"),
            ("†", r"$^\dagger$"),
            ("‡", r"$^\ddagger$"),
            ("°", r"$^\circ$"),
            ("−", "-"),
        ):
            text = text.replace(a, b)
        return text

    columns = list(rows[0])
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{" + "l" * len(columns) + "}", r"\toprule"]
    lines.append(" & ".join(esc(c) for c in columns) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(esc(r[c]) for c in columns) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + esc(spec["title"]) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def load_specs(names: list[str] | None = None) -> list[dict]:
    specs = [json.loads(p.read_text()) for p in sorted(PAPER_DIR.glob("*.json"))]
    if names:
        known = [s["table"] for s in specs]
        unknown = [n for n in names if n not in known]
        if unknown:
            from mm_repro.errors import UserError

            raise UserError(f"tables={unknown[0]!r} is not a table; choose from {', '.join(known)}")
        specs = [s for s in specs if s["table"] in names]
    return specs


def final_accuracies(row: dict, records: list[Record]) -> list[float]:
    """Final-epoch test accuracies (%) of the runs that reproduce one paper cell."""
    return [100 - rec.result["final"]["test_error"] for rec in records if matches(row, rec.run)]


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
                yerr=[sd or 0.0 for _, (_, sd, _) in ours],
                fmt="s-",
                color=colour,
                capsize=3,
                label=f"{label} (ours, final)",
            )
    ax.set_xlabel("α")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Table 6: CIFAR-10, PreActResNet18")
    ax.legend(fontsize=7)


def _plot_layers(ax: Any, spec: dict, records: list[Record], dataset: str) -> None:
    rows = [r for r in spec["rows"] if r["dataset"] == dataset]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["test_accuracy"][0] for r in rows], 0.4, label="paper", color="0.7")
    ours = [mean_std(accs) if (accs := final_accuracies(r, records)) else (float("nan"), None, 0) for r in rows]
    ax.bar(
        [i + 0.2 for i in x],
        [o[0] for o in ours],
        0.4,
        yerr=[o[1] or 0 for o in ours],
        capsize=2,
        label="ours (final)",
        color="tab:red",
    )
    ax.set_xticks(list(x), [r["label"] for r in rows], rotation=45, fontsize=7)
    low = min(r["test_accuracy"][0] for r in rows)
    ax.set_ylim(low - 3, 100 if dataset == "cifar10" else low + 8)
    ax.set_xlabel("eligible layers S")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Table 5: {dataset}, PreActResNet18")
    ax.legend(fontsize=7)


def plot_figures(specs: list[dict], records: list[Record], out: Path) -> list[Path]:
    """Table 6 (accuracy against alpha) and Table 5 (eligible layer sets): ours with error bars beside the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_name = {s["table"]: s for s in specs}
    if "table6_alpha" in by_name:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _plot_alpha(ax, by_name["table6_alpha"], records)
        written.append(out / "table6_alpha.png")
    if "table5_layers" in by_name:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, dataset in zip(axes, ("cifar10", "cifar100"), strict=True):
            _plot_layers(ax, by_name["table5_layers"], records, dataset)
        written.append(out / "table5_layers.png")
    for path, number in zip(written, plt.get_fignums(), strict=True):
        figure = plt.figure(number)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return written


def make_tables(
    paths: list[Path], out: Path, names: list[str] | None = None, figures: bool = True, include_chance: bool = False
) -> dict:
    """Scan `paths`, write <table>.md/.csv/.tex (and figures) into `out`; returns {table: markdown}. Refused, with
    nothing written, when a path does not exist, when no run is found, or when `out` is not a directory."""
    from mm_repro.errors import UserError
    from mm_repro.records import atomic_write

    if not paths:
        raise UserError("tables needs runs=DIR (or runs=[DIR,DIR]): the directories that hold run directories")
    for path in paths:
        if not path.is_dir():
            raise UserError(f"runs={path}: {'not a directory' if path.exists() else 'no such directory'}")
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file; tables writes a directory of tables: pick another out=")
    specs = load_specs(names)
    scanned = scan(paths, include_chance)
    if not any(vars(scanned).values()):
        raise UserError(f"runs={','.join(map(str, paths))} holds no run directories; nothing was written")
    out.mkdir(parents=True, exist_ok=True)
    rendered = {}
    for spec in specs:
        rows = build_rows(spec, scanned.records)
        markdown = to_markdown(spec, rows, scanned)
        atomic_write(out / f"{spec['table']}.md", markdown.encode())
        atomic_write(out / f"{spec['table']}.csv", to_csv(rows).encode())
        atomic_write(out / f"{spec['table']}.tex", to_latex(spec, rows).encode())
        rendered[spec["table"]] = (markdown, rows)
    if figures:
        plot_figures(specs, scanned.records, out)
    return {"scan": scanned, "tables": rendered}
