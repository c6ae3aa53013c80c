"""The paper's self-contained experiments as commands: `spiral`, `flattening` and `synthetic` (mm_repro.experiments),
each config checked, run, and its results printed beside the paper's, with the files written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mm_repro.config import SpiralConfig, StudyConfig, SyntheticConfig, to_schema
from mm_repro.experiments.flattening import run_study
from mm_repro.experiments.spiral import run_spiral
from mm_repro.experiments.synthetic import run_synthetic
from mm_repro.reports import verdicts


def _written(out: str, table: str, figures: list[str]) -> None:
    """The closing line of an experiment: its table and figures, under `out`."""
    print(f"written: {Path(out) / table} and {', '.join(figures)}")


def _print_claims(claims: list[dict]) -> None:
    """Each claim's verdict (reports.verdicts), then the count; the numbers behind each are in the report."""
    for claim in claims:
        print(f"{claim['verdict']}: {claim['claim']}")
    if claims:
        print(f"{verdicts.count(claims)} (rule {claims[0]['rule']}; the report gives each test)")


def spiral(cfg: Any) -> None:
    result = run_spiral(to_schema(cfg, SpiralConfig))
    for name, per_seed in result["results"].items():
        floats = [k for k, v in per_seed[0].items() if isinstance(v, float)]
        mean = {k: sum(r[k] for r in per_seed) / len(per_seed) for k in floats}
        print(
            f"{name:<15} test acc {mean['test_accuracy']:6.2f} %  boundary changes/line "
            f"{mean['boundary_changes_per_grid_line']:6.2f}  hidden low-confidence "
            f"{100 * mean['hidden_low_confidence_fraction']:5.1f} %  (mean over {len(per_seed)} seed(s))"
        )
    _print_claims(result["claims"])
    _written(cfg.out, result["file"], result["figures"])


def flattening(cfg: Any) -> None:
    report = run_study(to_schema(cfg, StudyConfig))
    _print_report(
        report,
        lambda row: (
            f"{row['setup']:<36} {row['method']:<15} acc {row['test accuracy (%)']:>6} %  top "
            f"{row['ours: top singular value']:>8} (paper {row['paper: top']})  "
            f"others {row['ours: sum of the others']:>8}"
        ),
        cfg.out,
        f"flattening_{cfg.study}.md",
    )


def synthetic(cfg: Any) -> None:
    report = run_synthetic(to_schema(cfg, SyntheticConfig))
    _print_report(
        report,
        lambda row: (
            f"task {row['task']} {row['model']:<32} accuracy {row['ours: test accuracy (%)']:>6} % "
            f"(paper {row['paper: test accuracy (%)']})  NLL {row['ours: test NLL']} (paper {row['paper: test NLL']})"
        ),
        cfg.out,
        f"table8_task{cfg.task}.md",
    )


def _print_report(report: dict, line: Callable[[dict], str], out: str, table: str) -> None:
    """A study's rows (each as `line` prints it), its claims, and what it wrote; a job of Table 8's sweep
    (classifier=...) writes its classifiers' files only, so no table or figure is named."""
    for row in report["rows"]:
        print(line(row))
    _print_claims(report["claims"])
    if report["figures"]:
        _written(out, table, report["figures"])
