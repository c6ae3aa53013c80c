"""Verdicts: one rule decides every claim over seeds (reports.verdicts), chance is a binomial test at any number of
classes (records.scan.chance_level), every committed claim carries its verdict, rule, n and statistic, and the pages
that state verdicts are what `python -m mm_repro verdicts` writes from the JSONs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mm_repro.experiments import flattening_report
from mm_repro.records.chance import at_chance, chance_level
from mm_repro.reports import pages, verdicts
from tests.conftest import REPO, run_cli

FIELDS = {"verdict", "rule", "n"}


def _seeds(*values: float) -> dict[int, float]:
    return dict(enumerate(values))


def test_a_pair_holds_fails_or_stays_open_by_the_one_sided_welch_test():
    clear = {"a": _seeds(1.0, 1.1, 0.9), "b": _seeds(2.0, 2.1, 1.9)}
    pair = verdicts.below("a", "b", clear)
    assert pair["verdict"] == "holds" and pair["agreement"] == "3 of 3 seeds" and pair["n"] == [3, 3]
    expected = stats.ttest_ind([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], equal_var=False, alternative="less").pvalue
    assert pair["p_value"] == pytest.approx(expected)  # scipy's Welch, not a comparison of means
    assert verdicts.below("b", "a", clear)["verdict"] == "does not hold"
    # means in the claimed order but within the seeds' spread: not resolved, with the seeds that would resolve it
    close = {"a": _seeds(3782.3, 3747.0, 3817.6), "b": _seeds(3790.7, 3772.9, 3808.5)}
    open_pair = verdicts.below("a", "b", close)
    assert np.mean(list(close["a"].values())) < np.mean(list(close["b"].values()))
    assert open_pair["verdict"] == "not resolved" and open_pair["seeds_to_resolve"] > 3
    assert verdicts.below("a", "b", {"a": _seeds(1.0), "b": _seeds(2.0)})["verdict"] == "not resolved"  # one seed


def test_the_seeds_to_resolve_give_the_test_its_power():
    a, b = [0.0, 1.0, 2.0], [1.0, 2.0, 3.0]  # d = 1: about 13 seeds a side for 80 % power at 0.05 one-sided
    n = verdicts.seeds_to_resolve(a, b)
    df = 2 * n - 2
    power = 1 - stats.nct.cdf(stats.t.ppf(0.95, df), df, 1.0 * np.sqrt(n / 2))
    assert 11 <= n <= 15 and power >= 0.8
    df = 2 * (n - 1) - 2
    assert 1 - stats.nct.cdf(stats.t.ppf(0.95, df), df, np.sqrt((n - 1) / 2)) < 0.8  # and no fewer would do


def test_a_conjunction_holds_only_when_every_pair_does_and_fails_on_one_reversal():
    values = {"top": _seeds(9, 9.1, 8.9), "mid": _seeds(5, 5.1, 4.9), "low": _seeds(1, 1.1, 0.9)}
    assert verdicts.order("x", ["top", "mid", "low"], values)["verdict"] == "holds"
    reversed_order = verdicts.order("x", ["top", "low", "mid"], values)
    assert reversed_order["verdict"] == "does not hold" and reversed_order["p_value"] > 0.5
    assert verdicts.smallest("x", "low", values)["verdict"] == "holds"
    tie = {**values, "low2": _seeds(1.05, 0.95, 1.1)}
    assert verdicts.smallest("x", "low", tie)["verdict"] == "not resolved"
    gone = verdicts.smallest("x", "low", {**values, "mid": {}})  # every seed of a method at chance
    assert gone["verdict"] == "not resolved" and "no trained seed of mid" in gone["why"]


def test_only_one_method_doing_both_is_decided_from_each_methods_conjunction():
    def both(verdict: str) -> dict:
        return {"verdict": verdict, "n": {}, "p_value": 0.01, "pairs": [], "seeds_to_resolve": None}

    assert verdicts.only("x", "mm", {"mm": both("holds"), "r": both("does not hold")})["verdict"] == "holds"
    assert verdicts.only("x", "mm", {"mm": both("holds"), "r": both("holds")})["verdict"] == "does not hold"
    assert verdicts.only("x", "mm", {"mm": both("holds"), "r": both("not resolved")})["verdict"] == "not resolved"


@pytest.mark.parametrize(
    ("classes", "images", "accuracy", "chance"),
    [
        (2, 1991, 64.5, False),  # a 2-class run at 35.5 % error (MNIST's 4 and 9): trained, not chance
        (2, 50, 60.0, True),  # 30 of 50 right on two classes: chance can't be told apart
        (5, 5139, 19.1, True),  # Figure 5's digits 0-4 net that diverged: one digit of five
        (5, 5139, 25.0, False),
        (10, 10000, 10.1, True),  # section 3.2's SGD dropout nets
        (10, 10000, 12.0, False),
        (100, 10000, 1.2, True),
        (100, 10000, 2.0, False),
        (200, 10000, 0.6, True),
        (200, 10000, 1.0, False),
    ],
)
def test_chance_is_a_binomial_test_at_any_number_of_classes(classes, images, accuracy, chance):
    assert chance_level(accuracy, classes, images) is chance
    p = stats.binomtest(round(images * accuracy / 100), images, 1 / classes, alternative="greater").pvalue
    assert bool(p >= 0.001) is chance  # the rule, stated once: not above chance at p < 0.001


def test_a_two_class_run_at_35_percent_error_is_tabulated_as_trained(tmp_path):
    from mm_repro.records.scan import scan

    result = {
        "run": {"dataset": "mnist", "num_classes": 10},
        "config": {"dataset": {"name": "mnist", "classes": [4, 9]}},
        "data": {"test": "1991 images, sha256 0123456789abcdef", "train": "11791 images, sha256 0123456789abcdef"},
        "final": {"test_error": 35.5},
    }
    assert not at_chance(result)
    assert at_chance({**result, "final": {"test_error": 50.5}})
    from tests.test_tables import _record  # a complete run's records, as `train` writes them

    run_dir = _record(tmp_path, "two", "erm", 0, 35.5, 35.5, 0.6, dataset="mnist", model="mlp_section3_2")
    record = json.loads((run_dir / "result.json").read_text())
    record.update(config=result["config"], data=result["data"])
    (run_dir / "result.json").write_text(json.dumps(record))
    scanned = scan([tmp_path])
    assert len(scanned.records) == 1 and not scanned.at_chance


def _report(values: dict[str, list[float]], study: str = "section3_2", accuracy: float = 98.0) -> dict:
    results = [
        {"net": {"setup": "s", "method": m, "measured": 1, "classes": None}, "seed": i, "test_accuracy": accuracy,
         "test_images": 10000, "at_chance": False, "mean_top": 1.0 + v, "mean_rest": v}
        for m, vs in values.items() for i, v in enumerate(vs)
    ]  # fmt: skip
    return {"study": study, "results": results}


def test_flattenings_headline_claim_uses_the_seeds_not_the_means():
    # manifold mixup's mean is the smallest, but dropout's seeds overlap it: not resolved (it was "holds" by means)
    report = _report({"baseline": [4974, 4900, 5050], "weight_decay": [4107, 4090, 4120],
                      "dropout": [3791, 3773, 3808], "input_mixup": [5048, 5000, 5090],
                      "manifold_mixup": [3782, 3747, 3818]})  # fmt: skip
    headline = flattening_report.claims(report)[-1]
    assert headline["claim"].startswith("manifold mixup leaves the smallest sum")
    assert headline["verdict"] == "not resolved"
    # the sum counts the singular values after the first only: the largest must not enter it
    assert {r["net"]["method"]: r["mean_rest"] for r in report["results"]}["dropout"] == 3808


def test_every_committed_claim_carries_its_verdict_rule_n_and_statistic():
    reports = pages.load_reports(REPO)
    assert len(reports) >= 11
    for path, report in reports.items():
        assert report["claims"], path
        for claim in report["claims"]:
            assert set(claim) >= FIELDS and claim["verdict"] in verdicts.VERDICTS, (path, claim["claim"])
            assert "p_value" in claim or "interval" in claim, (path, claim["claim"])


@pytest.mark.slow  # re-judges every committed result (re-plots the flattening figures): ~40 s
def test_the_committed_pages_and_jsons_are_what_the_verdicts_command_writes(tmp_path):
    for part in ("results", "docs", "README.md", "conf"):
        source = REPO / part
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / part)
    proc = run_cli("verdicts", f"root={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for page in ["README.md", "docs/reproducing.md", *[r["page"] for r in pages.manifest(REPO)]]:
        assert (tmp_path / page).read_text() == (REPO / page).read_text(), f"{page} differs from its JSONs"
    for path in pages.load_reports(REPO):
        committed, judged = (json.loads((root / path).read_text())["claims"] for root in (REPO, tmp_path))
        assert committed == judged, f"{path}: its claims are not today's rule's"


def test_a_page_without_its_generated_block_is_one_line(tmp_path):
    from mm_repro.errors import UserError

    with pytest.raises(UserError, match="has no generated block"):
        pages.replace_between("no markers here", pages.START + pages.END, Path("page.md"))


def test_a_coverage_row_is_written_whatever_its_other_cells_hold_and_a_missing_one_is_an_error():
    from mm_repro.errors import UserError

    table = (
        "| claim | command | notes | rerun here |\n|---|---|---|---|\n"
        "| Figure 5 | `flattening` | | old |\n"
        "| Table 8 | `synthetic task=A\\|B` | ours | old |\n"
        "| Other | x | y | kept |\n"
    )
    written = pages._coverage(table, {"Figure 5": "new five", "Table 8": "new eight"})
    assert "| Figure 5 | `flattening` | | new five |\n" in written
    assert "| Table 8 | `synthetic task=A\\|B` | ours | new eight |\n" in written
    assert "| Other | x | y | kept |\n" in written
    with pytest.raises(UserError, match="no coverage row named 'Figure 6'"):
        pages._coverage(table, {"Figure 6": "x"})
