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


# Which epoch's figures a column shows: the last, the best on test (what the official code reported), and, for runs
# that held a validation split out, the test figures at the best validation epoch (model selection done right).
SELECTIONS = ("final", "best", "best_valid")
# Setup keys that make a run another method than its name says: a row matches only runs with its value (absent: the
# key's default, config.ADDED_KEYS); "nonzero" matches any value but the default.
METHOD_KEYS = ("method.block_gradient", "model.dropout")


def metric_values(record: Record, metric: dict, row: dict, selections: tuple[str, ...]) -> list[float | None]:
    """One metric of one run at each selection (an evaluation metric has one value, under the first)."""
    name = metric["name"]
    if "eval" in metric:
        value = _lookup(record.eval, metric["eval"].format(**row))
        return [value] + [None] * (len(selections) - 1)
    recorded = name.replace("accuracy", "error")
    out = []
    for selection in selections:
        figures = record.result.get(selection) or {}
        value = figures.get(recorded)
        if value is not None and name != recorded:
            value = 100 - value
        out.append(value)
    return out


def _setup_value(setup: dict, key: str) -> Any:
    from mm_repro.config import ADDED_KEYS

    return setup.get(key, ADDED_KEYS[key])


def matches(row: dict, record: Record) -> bool:
    """Does a run reproduce this paper cell? Cited rows (other papers) match nothing."""
    run = record.run
    if "cited" in row:
        return False
    if (row["dataset"], row["model"], row["method"]) != (run.get("dataset"), run.get("model"), run.get("method")):
        return False
    if row["method"] in ("mixup", "manifold") and row.get("alpha") is not None and run.get("alpha") != row["alpha"]:
        return False
    if (
        "layers" in row
        and row["method"] in ("mixup", "manifold")
        and sorted(run.get("layers") or []) != sorted(row["layers"])
    ):
        return False
    for key in METHOD_KEYS:
        want, have = _setup_value(row.get("setup", {}), key), _setup_value(record.setup, key)
        if want == "nonzero" and not have or want != "nonzero" and have != want:
            return False
    return True


def setup_labels(setups: list[dict]) -> list[str]:
    """A short label per setup: the LABEL_KEYS, and every key whose value differs between the setups."""
    keys = set().union(*setups) if setups else set()
    differing = sorted(k for k in keys if len({json.dumps(s.get(k), default=str) for s in setups}) > 1)
    shown = [k for k in LABEL_KEYS if k in keys] + [k for k in differing if k not in LABEL_KEYS]
    return [", ".join(f"{short_key(k)}={s.get(k)}" for k in shown if s.get(k) is not None) for s in setups]


def short_key(key: str) -> str:
    """A setup key as a label shows it: its last part (`train.epochs` -> epochs), `protocol.name` as protocol."""
    return key.removesuffix(".name").split(".")[-1]


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return MISSING
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def method_label(row: dict) -> str:
    if "name" in row:  # the paper's own name for the row (the regularizer comparison's "Dropout", say)
        return row["name"]
    names = {"erm": "No Mixup", "mixup": "Input Mixup", "manifold": "Manifold Mixup", "cutout": "Cutout"}
    if row["method"] not in names:
        return row["method"]
    mixes = row.get("alpha") is not None and row["method"] in ("mixup", "manifold")
    alpha = f" (α = {row['alpha']:g})" if mixes else ""
    blocked = " (gradient blocked)" if row.get("setup", {}).get("method.block_gradient") else ""
    return names[row["method"]] + alpha + blocked


def selections_for(spec: dict, records: list[Record], report: list[str] | None) -> tuple[str, ...]:
    """The selections a table shows: `report` if given, else final and best, and best_valid when a run of the
    table has it."""
    if report:
        return tuple(report)
    rows = spec["rows"]
    valid = any("best_valid" in r.result for r in records if any(matches(row, r) for row in rows))
    return ("final", "best", "best_valid") if valid else ("final", "best")


def build_rows(spec: dict, records: list[Record], report: list[str] | None = None) -> list[dict]:
    """One output row per paper cell and setup of our runs; a cell without runs gets one 'missing' row."""
    selections = selections_for(spec, records, report)
    out = []
    for row in spec["rows"]:
        by_setup: dict[str, list[Record]] = {}
        for record in records:
            if matches(row, record):
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
        evaluated = [m for m in spec["metrics"] if "eval" in m]
        for setup, group in sorted(groups.items()) or [("", [])]:
            line = {**base, "setup": setup or ("cited" if "cited" in row else "missing"), "n": len(group)}
            if evaluated:  # a cell's n counts the runs evaluated; the others are named, never averaged silently
                lacking = [r for r in group if any(metric_values(r, m, row, ("final",))[0] is None for m in evaluated)]
                line["n"] = len(group) - len(lacking)
                line["not evaluated"] = "; ".join(f"{r.path.parent.name}/{r.path.name}" for r in lacking) or MISSING
            for metric in spec["metrics"]:
                digits = 3 if "nll" in metric["name"] else 2
                paper = row.get(metric["name"]) or [None, None]
                line[f"paper {metric['name']}"] = (  # as printed in the paper
                    MISSING if paper[0] is None else f"{paper[0]:g}" + (f" ± {paper[1]:g}" if paper[1] else "")
                )
                values = [metric_values(r, metric, row, selections) for r in group]
                shown = selections[:1] if "eval" in metric else selections
                first_mean = None
                for i, selection in enumerate(shown):
                    found = [v[i] for v in values if v[i] is not None]
                    mean, std, _ = mean_std(found) if found else (None, None, 0)
                    first_mean = mean if i == 0 else first_mean
                    label = selection.replace("_", " ") if "eval" not in metric else "final"
                    line[f"ours {metric['name']} ({label})"] = _fmt(mean, std, digits)
                sigma = (first_mean - paper[0]) / paper[1] if first_mean is not None and paper[1] else None
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
        "epoch (what the official code reported), 'best valid' the test figures at the best validation epoch (runs "
        "with dataset.valid_per_class); Δ/σ = (ours in the first column − paper) / paper std.",
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


def make_tables(
    paths: list[Path],
    out: Path,
    names: list[str] | None = None,
    figures: bool = True,
    include_chance: bool = False,
    report: list[str] | None = None,
) -> dict:
    """Scan `paths`, write <table>.md/.csv/.tex (and figures) into `out`; returns {table: markdown}. Refused, with
    nothing written, when a path does not exist, when no run is found, or when `out` is not a directory."""
    from mm_repro.errors import UserError
    from mm_repro.records import atomic_write, remove_stale_temporaries

    if not paths:
        raise UserError("tables needs runs=DIR (or runs=[DIR,DIR]): the directories that hold run directories")
    for path in paths:
        if not path.is_dir():
            raise UserError(f"runs={path}: {'not a directory' if path.exists() else 'no such directory'}")
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file; tables writes a directory of tables: pick another out=")
    specs = load_specs(names)
    bad = [r for r in report or [] if r not in SELECTIONS]
    if bad:
        raise UserError(f"report={bad[0]!r} is not a selection; choose from {', '.join(SELECTIONS)}")
    scanned = scan(paths, include_chance)
    if not any(vars(scanned).values()):
        raise UserError(f"runs={','.join(map(str, paths))} holds no run directories; nothing was written")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, ("curves",))  # a tables run killed mid-write left them
    rendered = {}
    for spec in specs:
        rows = build_rows(spec, scanned.records, report)
        markdown = to_markdown(spec, rows, scanned)
        atomic_write(out / f"{spec['table']}.md", markdown.encode())
        atomic_write(out / f"{spec['table']}.csv", to_csv(rows).encode())
        atomic_write(out / f"{spec['table']}.tex", to_latex(spec, rows).encode())
        rendered[spec["table"]] = (markdown, rows)
    from mm_repro.reports import summary

    rows = summary.summary_rows(scanned.records)
    unmatched = summary.fits_no_table(scanned.records, load_specs())
    atomic_write(out / "summary.md", summary.to_markdown(rows, unmatched).encode())
    atomic_write(out / "summary.csv", summary.to_csv(rows).encode())
    if figures:
        from mm_repro.reports.figures import plot_figures, plot_learning_curves

        plot_figures(specs, scanned.records, out)
        plot_learning_curves(scanned.records, out)
    return {"scan": scanned, "tables": rendered, "unmatched": unmatched}
