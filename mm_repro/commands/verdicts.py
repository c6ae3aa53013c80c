"""`python -m mm_repro verdicts`: every committed result judged again by today's rules from the per-seed numbers its
JSON holds (nothing is retrained: mm_repro.experiments' `rejudge`), then the pages written from those JSONs
(mm_repro.reports.pages): the README's "What has been reproduced here", docs/reproducing.md's "rerun here" cells and
each result page's claims. tests/test_verdicts.py runs it on a copy of the repository and fails when a committed page
or JSON differs from what it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mm_repro.config import VerdictsConfig, to_schema
from mm_repro.experiments import flattening_report, spiral, synthetic_report
from mm_repro.reports import pages, verdicts


def rejudge(report: dict, out: Path) -> dict:
    """One result judged again by the experiment that made it (told apart by what its JSON holds)."""
    if "study" in report:
        return flattening_report.rejudge(report, out)
    if str(report.get("file", "")).startswith("spiral"):
        return spiral.rejudge(report, out)
    return synthetic_report.rejudge(report, out)


def run(cfg: Any) -> None:
    vcfg: VerdictsConfig = to_schema(cfg, VerdictsConfig)
    root = Path(vcfg.root)
    reports = pages.load_reports(root)
    for path, report in reports.items():
        reports[path] = rejudge(report, (root / path).parent)
        print(f"{path}: {verdicts.count(reports[path]['claims'])}")
    for changed in pages.write_pages(root, reports):
        print(f"written: {changed}")
