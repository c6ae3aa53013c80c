"""What `synthetic` writes for a Table 8 task: the table of ours beside the paper's (mean ± sample std over seeds),
the paper's two claims decided by the rule (reports.verdicts), Figure 4's examples; and a committed report judged
again by today's rule (`rejudge`)."""

from __future__ import annotations

from pathlib import Path

from mm_repro.config import paper_numbers
from mm_repro.files import write_json
from mm_repro.reports import verdicts
from mm_repro.reports.cells import spread
from mm_repro.reports.writer import write_table

METHODS = ("none", "input", "factor")  # Table 8's rows: no mixup, input mixup, factor mixup
BATCH = 128  # images a step, as the official script
NAMES = {"none": "No Mixup", "input": "Input Mixup (1.0)", "factor": "Ground Truth Factor Mixup (1.0)"}  # the paper's


def table_rows(task: str, results: list[dict]) -> list[dict]:
    """Table 8's rows for a task: ours (mean ± sample std over the seeds) beside the paper's, one row per method."""
    paper = paper_numbers("table8")[task]
    rows = []
    for method in METHODS:
        mine = [r for r in results if r["method"] == method]
        rows.append(
            {
                "task": task,
                "model": NAMES[method],
                "ours: test accuracy (%)": spread([r["test_accuracy"] for r in mine], 2),
                "paper: test accuracy (%)": f"{paper[method][0]:g}",
                "ours: test NLL": spread([r["test_nll"] for r in mine], 4),
                "paper: test NLL": f"{paper[method][1]:g}",
            }
        )
    return rows


def claims(results: list[dict]) -> list[dict]:
    """Table 8's two claims, decided on our seeds (reports.verdicts): "in all cases visible mixup significantly
    improved likelihood, but not to the same degree as factor mixup" (App. A)."""
    nll = {m: {r["seed"]: r["test_nll"] for r in results if r["method"] == m} for m in METHODS}
    return [
        verdicts.all_below("input mixup lowers the test NLL below no mixup's", ["input"], "none", nll),
        verdicts.all_below("factor mixup lowers it further, below input mixup's", ["factor"], "input", nll),
    ]


def rejudge(report: dict, out: Path) -> dict:
    """A task's report judged again by today's rule from its per-seed results (nothing retrained); its table and JSON
    rewritten (its rows built as the run builds them, in the paper's order)."""
    report["rows"] = table_rows(report["config"]["task"], report["results"])
    report["claims"] = claims(report["results"])
    write_report(report, out)
    return report


def write_report(report: dict, out: Path) -> None:
    """The task's table (md, csv), its JSON and its claims' verdicts, from the report."""
    cfg, made = report["config"], report["provenance"]
    seeds = ", ".join(map(str, cfg["seeds"]))
    note = (
        f"Ours: mean ± std (sample) over seeds {seeds} ({len(cfg['seeds'])} run(s) per method), {cfg['steps']} steps "
        f"of batch {BATCH}, {report['results'][0]['test_images']} test images per seed. `{made['command']}` on "
        f"{made['device']}, torch {made['torch_version']}, {made['wall_seconds'] / 60:.1f} min, commit "
        f"{made['git_commit']}."
        + (f" Classifiers: {made['classifiers']}." if made.get("classifiers") else "")
        + f"\n\nThe paper's claims on ours ({verdicts.count(report['claims'])}; rule `{verdicts.RULE}`, docs/trust.md "
        "'Verdicts'):\n\n" + "\n".join(f"- {verdicts.describe(c)}" for c in report["claims"])
    )
    write_table(out / f"table8_task{cfg['task']}", f"Table 8, task {cfg['task']}", note, report["rows"])
    write_json(out / f"table8_task{cfg['task']}.json", report)
