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

from pathlib import Path

from mm_repro.errors import UserError
from mm_repro.files import atomic_write, output_dir
from mm_repro.records import remove_stale_temporaries
from mm_repro.records.scan import Record, Scan, scan
from mm_repro.reports import summary, writer
from mm_repro.reports.cells import (
    MISSING,
    MODEL_NAMES,
    SELECTIONS,
    by_setup,
    fmt,
    load_specs,
    matches,
    mean_std,
    method_label,
    metric_values,
    shown,
)
from mm_repro.reports.curves import plot_comparisons, plot_learning_curves
from mm_repro.reports.figures import plot_figures


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
        groups = by_setup([r for r in records if matches(row, r)])
        base = {
            "dataset": row["dataset"],
            "arch": MODEL_NAMES.get(row["model"], row["model"]),
            "method": method_label(row),
        }
        if "label" in row:
            base["cell"] = row["label"]
        evaluated = [m for m in spec["metrics"] if "eval" in m]
        for setup, group in list(groups.items()) or [("", [])]:
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
                    line[f"ours {metric['name']} ({label})"] = fmt(mean, std, digits)
                sigma = (first_mean - paper[0]) / paper[1] if first_mean is not None and paper[1] else None
                line[f"Δ/σ {metric['name']}"] = f"{sigma:+.1f}" if sigma is not None else MISSING
            out.append(line)
    return out


def to_markdown(spec: dict, rows: list[dict], scanned: Scan) -> str:
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
        *writer.markdown(rows),
    ]
    lines += apart_lines(scanned)
    return "\n".join(lines) + "\n"


def apart_lines(scanned: Scan) -> list[str]:
    """The runs no table averages (failed, diverged, at chance, repeated, stale, incomplete, malformed), by kind."""
    lines = []
    for title, entries in scanned.apart():
        if entries:
            lines += ["", f"{title}: {len(entries)}", *[f"- {shown(p)}" for p in entries]]
    return lines


def check_runs(paths: list[Path]) -> None:
    """The directories `tables` (and api.tables) read: at least one, each an existing directory; else one line."""
    if not paths:
        raise UserError("tables needs runs=DIR (or runs=[DIR,DIR]): the directories that hold run directories")
    for path in paths:
        if not path.is_dir():
            raise UserError(f"runs={path}: {'not a directory' if path.exists() else 'no such directory'}")


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
    check_runs(paths)
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file; tables writes a directory of tables: pick another out=")
    specs = load_specs(names)
    bad = [r for r in report or [] if r not in SELECTIONS]
    if bad:
        raise UserError(f"report={bad[0]!r} is not a selection; choose from {', '.join(SELECTIONS)}")
    scanned = scan(paths, include_chance)
    if not any(vars(scanned).values()):
        raise UserError(f"runs={','.join(map(str, paths))} holds no run directories; nothing was written")
    output_dir(out)
    remove_stale_temporaries(out, ("curves",))  # a tables run killed mid-write left them
    rendered, empty = {}, []
    for spec in specs:
        rows = build_rows(spec, scanned.records, report)
        markdown = to_markdown(spec, rows, scanned)
        atomic_write(out / f"{spec['table']}.md", markdown.encode())
        atomic_write(out / f"{spec['table']}.csv", writer.csv_text(rows).encode())
        atomic_write(out / f"{spec['table']}.tex", writer.latex(rows, spec["title"]).encode())
        if any(matches(row, r) for row in spec["rows"] for r in scanned.records):
            rendered[spec["table"]] = (markdown, rows)
        else:  # the paper's numbers alone: its files are written, it is not printed and it gets no figure
            empty.append(spec["table"])
    rows = summary.summary_rows(scanned.records)
    unmatched = summary.fits_no_table(scanned.records, load_specs())
    atomic_write(out / "summary.md", summary.to_markdown(rows, unmatched).encode())
    atomic_write(out / "summary.csv", summary.writer.csv_text(rows).encode())
    for name in empty:  # a figure of an earlier `tables` run into this directory would belong to no runs now
        (out / f"{name}.png").unlink(missing_ok=True)
    if figures:
        plot_figures([s for s in specs if s["table"] in rendered], scanned.records, out)
        plot_learning_curves(scanned.records, out)
        plot_comparisons(scanned.records, out)
    return {"scan": scanned, "tables": rendered, "empty": empty, "unmatched": unmatched}
