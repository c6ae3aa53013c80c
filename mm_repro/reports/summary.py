"""A summary of any set of runs, paper table or not: one row per setup (the cell's keys and every config key that can
change a number, as `tables` groups), labelled by the keys on which the groups differ (what the sweep varied), with
mean, sample std and n over seeds of the final and best test error (and top-5 where recorded); and the runs that fit
no paper table. `tables` writes it as summary.md/.csv; a multirun prints it when it ends."""

from __future__ import annotations

from pathlib import Path

from mm_repro.records.scan import Record, scan
from mm_repro.reports import writer
from mm_repro.reports.cells import by_setup, load_specs, matches, shown, spread


def summary_rows(records: list[Record]) -> list[dict]:
    rows = []
    for label, group in by_setup(records).items():
        run = group[0].run
        row = {
            "dataset": run["dataset"],
            "model": run["model"],
            "method": run["method"],
            "setup": label or "(one setup)",
            "n": len(group),
            "seeds": ",".join(str(r.run.get("seed")) for r in sorted(group, key=lambda r: r.run.get("seed") or 0)),
        }
        for selection in ("final", "best"):
            row[f"test error ({selection})"] = spread([r.result[selection]["test_error"] for r in group])
        top5 = [r.result["final"]["test_top5_error"] for r in group if "test_top5_error" in r.result["final"]]
        row["top-5 error (final)"] = spread(top5)
        rows.append(row)
    return rows


def fits_no_table(records: list[Record], specs: list[dict]) -> list[Record]:
    """The runs no row of any paper table takes (a user's own sweep, a model or dataset the paper did not use)."""
    return [r for r in records if not any(matches(row, r) for spec in specs for row in spec["rows"])]


def to_markdown(rows: list[dict], unmatched: list[Record]) -> str:
    lines = [
        "## Summary of every complete run",
        "",
        "One row per setup; 'setup' names the keys on which the groups differ. Mean ± sample std over seeds.",
        "",
    ]
    if rows:
        lines += writer.markdown(rows)
    if unmatched:
        lines += ["", f"Runs that fit no paper table: {len(unmatched)}", *[f"- {shown(r.path)}" for r in unmatched]]
    return "\n".join(lines) + "\n"


def sweep_summary(run_dirs: list[Path]) -> str:
    """A few lines for the end of a multirun: each setup's n and mean final and best test error."""
    scanned = scan([d for d in run_dirs if d.is_dir()])  # the rule `tables` uses: runs at chance are set apart
    rows = summary_rows(scanned.records)
    lines = [f"sweep summary: {scanned.summary()}"]
    if scanned.at_chance:
        lines.append(
            f"  {len(scanned.at_chance)} run(s) at chance level (accuracy not above chance by a binomial test at p < "
            "0.001) are not averaged here, as in `tables` (include_chance=true counts them there)"
        )
    if not rows:
        return "\n".join(lines)
    for r in rows:
        lines.append(
            f"  {r['dataset']} {r['model']} {r['method']} [{r['setup']}] n={r['n']}: test error final "
            f"{r['test error (final)']}, best {r['test error (best)']}"
        )
    unmatched = fits_no_table(scanned.records, load_specs())
    if unmatched:
        lines.append(f"  {len(unmatched)} of these runs fit no paper table (`tables` lists them in summary.md)")
    return "\n".join(lines)
