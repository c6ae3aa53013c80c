"""`tables`: exact statistics from records with known values, grouping by setup, missing cells, paper numbers,
partial and malformed records reported; a real tiny multirun becomes Table 1a through the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from mm_repro.config import CONF_DIR
from mm_repro.records.scan import scan
from mm_repro.reports.cells import load_specs, mean_std
from mm_repro.reports.tables import make_tables
from tests.conftest import TINY, data_args, run_cli, sweep_counts


def _record(root: Path, name: str, method: str, seed: int, final: float, best: float, nll: float, **run) -> Path:
    d = root / name
    d.mkdir(parents=True)
    info = {
        "dataset": "cifar10",
        "model": "preactresnet18",
        "method": method,
        "seed": seed,
        "width": 64,
        "alpha": {"erm": None, "mixup": 1.0, "manifold": 2.0}[method],
        "layers": [],
        "protocol": "official",
        "epochs": 2000,
        "loss": "bce_softmax",
        "batch_size": 100,
        "pairing": "permutation",
        "precision": "fp32",
    }
    info.update(run)
    result = {
        "run": info,
        "final": {"test_error": final, "test_nll": nll, "epoch": 2000},
        "best": {"test_error": best, "test_nll": nll + 0.01, "epoch": 1500},
    }
    (d / "result.json").write_text(json.dumps(result))
    return d


def test_known_records_give_exact_statistics_grouping_and_missing_cells(tmp_path):
    for seed, (final, best) in enumerate([(3.0, 2.9), (3.2, 3.1), (3.4, 3.0)]):
        _record(tmp_path, f"mm{seed}", "manifold", seed, final, best, 0.1 + seed * 0.01)
    _record(tmp_path, "erm_short", "erm", 0, 50.0, 40.0, 1.5, epochs=1, width=4)
    made = make_tables([tmp_path], tmp_path / "out", ["table1_cifar10"], figures=False)
    markdown, rows = made["tables"]["table1_cifar10"]
    mm = next(r for r in rows if r["arch"] == "PreActResNet18" and r["method"] == "Manifold Mixup (α = 2)")
    assert mm["n"] == 3
    assert mm["ours test_error (final)"] == "3.20 ± 0.20"  # mean 3.2, sample std 0.2
    assert mm["ours test_error (best)"] == f"3.00 ± {math.sqrt(0.01):.2f}"
    assert mm["paper test_error"] == "2.95 ± 0.046"
    assert mm["Δ/σ test_error"] == f"{(3.2 - 2.95) / 0.046:+.1f}"
    erm = next(r for r in rows if r["arch"] == "PreActResNet18" and r["method"] == "No Mixup")
    assert erm["n"] == 1 and "epochs=1" in erm["setup"] and "width=4" in erm["setup"]
    assert erm["ours test_error (final)"] == "50.00"
    missing = [r for r in rows if r["setup"] == "missing"]
    assert len(missing) == 7  # IM on PARN18, and every PARN34 / WRN cell
    assert all(r["ours test_error (final)"] == "—" for r in missing)
    assert "4.83 ± 0.066" in markdown
    for ext in ("md", "csv", "tex"):
        assert (tmp_path / "out" / f"table1_cifar10.{ext}").stat().st_size > 0
    with open(tmp_path / "out" / "table1_cifar10.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_any_sweep_is_summarised_by_what_it_varied_and_runs_outside_the_paper_are_named(tmp_path):
    # a user's own sweep: a model the paper never trained (WRN-28-2), at two schedules
    for seed, final in enumerate([10.0, 12.0]):
        _record(tmp_path, f"lr1-{seed}", "manifold", seed, final, final - 1, 0.3, model="wrn28_2")
    _record(tmp_path, "lr2-0", "manifold", 0, 20.0, 19.0, 0.5, model="wrn28_2", epochs=10)
    _record(tmp_path, "paper", "erm", 0, 5.0, 4.5, 0.2)
    made = make_tables([tmp_path], tmp_path / "out", ["table1_cifar10"], figures=False)
    summary = (tmp_path / "out" / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| cifar10")]
    assert len(rows) == 3  # three setups: the two WRN-28-2 schedules and the paper's ERM run
    wrn = next(r for r in rows if "wrn28_2" in r and "epochs=2000" in r)
    assert "| 2 | 0,1 | 11.00 ± 1.41 | 10.00 ± 1.41 |" in wrn  # n, seeds, final and best mean ± sample std
    assert "Runs that fit no paper table: 3" in summary and str(tmp_path / "paper") not in summary.split("table: 3")[1]
    assert len(made["unmatched"]) == 3 and (tmp_path / "out" / "summary.csv").read_text().count("\n") == 4


def test_groups_do_not_mix_setups(tmp_path):
    _record(tmp_path, "a", "manifold", 0, 3.0, 3.0, 0.1)
    _record(tmp_path, "b", "manifold", 1, 9.0, 9.0, 0.1, protocol="paper", epochs=1200)
    _, rows = make_tables([tmp_path], tmp_path / "out", ["table1_cifar10"], figures=False)["tables"]["table1_cifar10"]
    mm = [r for r in rows if r["arch"] == "PreActResNet18" and r["method"].startswith("Manifold")]
    assert sorted(r["ours test_error (final)"] for r in mm) == ["3.00", "9.00"]


def test_partial_and_malformed_records_are_reported_not_fatal(tmp_path):
    _record(tmp_path, "good", "manifold", 0, 3.0, 3.0, 0.1)
    partial = tmp_path / "partial"
    (partial / ".hydra").mkdir(parents=True)
    (partial / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (partial / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "result.json").write_text("{not json")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "result.json").write_text(json.dumps({"run": {}}))
    typed = _record(tmp_path, "typed", "manifold", 1, 3.0, 3.0, 0.1)
    result = json.loads((typed / "result.json").read_text())
    result["final"]["test_error"] = "3.0"  # a string where a number belongs
    (typed / "result.json").write_text(json.dumps(result))
    nulls = _record(tmp_path, "nulls", "manifold", 2, 3.0, 3.0, 0.1)
    result = json.loads((nulls / "result.json").read_text())
    result["best"] = None
    result["run"]["layers"] = "0,1"
    (nulls / "result.json").write_text(json.dumps(result))
    found = scan([tmp_path, tmp_path / "does-not-exist"])
    assert [r.path.name for r in found.records] == ["good"]
    assert len(found.incomplete) == 1 and "partial (2 epochs recorded" in found.incomplete[0]
    reasons = {Path(m.split(":")[0]).parent.name: m for m in found.malformed[1:]}
    assert set(reasons) == {"broken", "wrong", "typed", "nulls"}
    assert "final.test_error is '3.0', not a finite number" in reasons["typed"]
    assert "run.layers is '0,1', not a list of points" in reasons["nulls"]
    assert "does-not-exist: no such directory" in found.malformed[0]
    markdown = make_tables([tmp_path], tmp_path / "out", ["table1_cifar10"], figures=False)["tables"]["table1_cifar10"][
        0
    ]
    assert "Incomplete runs (not in the table): 1" in markdown and "Malformed records (skipped): 4" in markdown


def test_failed_and_diverged_runs_are_listed_apart_and_never_averaged(tmp_path):
    for seed in (0, 1):
        _record(tmp_path, f"mm{seed}", "manifold", seed, 3.0, 3.0, 0.1)
    diverged = _record(tmp_path, "mm2", "manifold", 2, 90.0, 90.0, 9.9)  # a stray result beside the failure
    (diverged / "failure.json").write_text(json.dumps({"status": "diverged", "epoch": 7, "message": "diverged"}))
    failed = tmp_path / "crashed"
    failed.mkdir()
    (failed / "failure.json").write_text(json.dumps({"status": "failed", "message": "RuntimeError: boom"}))
    made = make_tables([tmp_path], tmp_path / "out", ["table1_cifar10"], figures=False)
    markdown, rows = made["tables"]["table1_cifar10"]
    mm = next(r for r in rows if r["arch"] == "PreActResNet18" and r["method"].startswith("Manifold"))
    assert mm["n"] == 2 and mm["ours test_error (final)"] == "3.00 ± 0.00"
    assert "Diverged runs (not results: never averaged into a cell): 1" in markdown and "mm2 in epoch 7" in markdown
    assert "Failed runs (not results): 1" in markdown and "RuntimeError: boom" in markdown
    assert made["scan"].summary() == "2 complete runs, 0 incomplete, 1 failed, 1 diverged, 0 malformed"


def test_paper_numbers_cover_every_table_and_cell():
    specs = {s["table"]: s for s in load_specs()}
    assert set(specs) == {
        "table1_cifar10",
        "table1_cifar100",
        "table2_svhn",
        "table5_layers",
        "table6_alpha",
        "table7_fgsm",
        "table9_deformations",
        "table3_tiny_imagenet",
        "text_regularizers",
        "text_gradient_blocked",
        "text_knn",
        "appendix_d_pgd",
        "figure6_training_loss",
        "figure7_training_loss",
    }
    counts = {name: len(s["rows"]) for name, s in specs.items()}
    assert counts == {
        "table1_cifar10": 11,
        "table1_cifar100": 11,
        "table2_svhn": 9,
        "table5_layers": 20,
        "table6_alpha": 12,
        "table7_fgsm": 10,
        "table9_deformations": 68,
        "table3_tiny_imagenet": 9,
        "text_regularizers": 5,
        "text_gradient_blocked": 2,
        "text_knn": 3,
        "appendix_d_pgd": 3,
        "figure6_training_loss": 5,
        "figure7_training_loss": 5,
    }
    t3 = {(r["method"], r["alpha"]): r["test_top5_accuracy"][0] for r in specs["table3_tiny_imagenet"]["rows"]}
    assert t3[("manifold", 0.2)] == 73.59 and t3[("erm", None)] == 71.04
    t6 = {(r["method"], r["alpha"]): r["test_accuracy"][0] for r in specs["table6_alpha"]["rows"]}
    assert t6[("manifold", 2.0)] == 97.23 and t6[("mixup", 0.5)] == 96.68
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)


def _jobs(experiment: str, *extra: str) -> list[list[str]]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()] + list(extra)
    return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)[0]


@pytest.mark.parametrize(
    ("experiment", "n"),
    [
        ("table1_cifar10", 45),
        ("table1_cifar100", 45),
        ("table2_svhn", 45),
        ("table5_layers", 18),
        ("table6_alpha", 12),
        ("table7_fgsm", 6),
        ("table9_deformations", 3),
        ("table3_tiny_imagenet", 8),
        ("regularizers", 4),
        ("figure6_training_loss", 3),
        ("figure7_training_loss", 3),
    ],
)
def test_experiment_files_sweep_exactly_the_tables_cells(experiment, n):
    jobs = _jobs(experiment)
    assert len(jobs) == n
    if experiment.startswith(("table1", "table2")):
        assert sum("method=erm" in j for j in jobs) == 15  # ERM once per model and seed, not per alpha


@pytest.mark.parametrize(
    ("experiment", "extra", "n"),
    [
        ("table3_tiny_imagenet", ["method=erm", "method.alpha=0.0"], 1),  # ERM once, not once per alpha
        ("regularizers", ["method=erm", "model.dropout=0.2"], 1),
        ("figure6_training_loss", ["method=mixup", "method.layers=[0]"], 1),
        ("figure6_training_loss", ["method.layers=[0,1,2]", "method.block_gradient=true"], 1),
    ],
)
def test_the_second_commands_of_an_experiment_add_one_run_each(experiment, extra, n):
    # what the experiment file's comment and its script run beside the main sweep: the command line wins per key
    jobs = _jobs(experiment, *extra)
    assert len(jobs) == n
    assert all(any(x.lower() == j.lower() for j in jobs[0]) for x in extra)


@pytest.mark.slow
def test_tiny_real_multirun_becomes_table_1a(cifar10_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train",
        "-m",
        "dataset=cifar10",
        "model=preactresnet18",
        "method=erm,mixup,manifold",
        "seed=0,1",
        *data_args(cifar10_root)[1:],
        "train.epochs=1",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    counts = sweep_counts(proc.stdout)  # printed when the multirun ends
    assert counts["complete runs"] + counts.get("at chance", 0) == 6 and counts["failed"] == counts["incomplete"] == 0
    averaged = sum(int(x.split(" n=")[1].split(":")[0]) for x in proc.stdout.splitlines() if "test error final" in x)
    assert averaged == counts["complete runs"]  # each run not at chance is in one setup's line
    out = tmp_path / "tables"
    proc = run_cli("tables", f"runs={sweep}", f"out={out}", "include_chance=true", cwd=tmp_path)  # 1 tiny epoch
    assert proc.returncode == 0, proc.stderr
    assert "Table 1(a): CIFAR-10" in proc.stdout and "6 complete runs" in proc.stdout
    for method, paper in (
        ("No Mixup", "4.83 ± 0.066"),
        ("Input Mixup (α = 1)", "3.82 ± 0.048"),
        ("Manifold Mixup (α = 2)", "2.95 ± 0.046"),
    ):
        table_1a = proc.stdout.split("## Table 1(a): CIFAR-10")[1].split("\n## ")[0]  # other tables have such rows too
        line = next(x for x in table_1a.splitlines() if f"| PreActResNet18 | {method} |" in x)
        assert f"| 2 | {paper} |" in line and "epochs=1, width=4" in line
    assert (out / "table1_cifar10.tex").exists() and (out / "table6_alpha.png").exists()
    curves = sorted((out / "curves").glob("*.png"))  # one learning-curve figure per setup group: erm, mixup, manifold
    assert len(curves) == 3 and all(c.stat().st_size > 10_000 for c in curves)
    assert (out / "curves" / "index.md").read_text().count("| 2 |") == 3  # two seeds each
    bad = run_cli("tables", f"runs={sweep}", "tables=[table99]", f"out={out}", cwd=tmp_path)
    assert bad.returncode == 2 and "tables='table99' is not a table" in bad.stderr


@pytest.mark.slow
def test_tables_are_logged_to_wandb_offline_when_asked(tmp_path):
    _record(tmp_path / "runs", "a", "manifold", 0, 3.0, 3.0, 0.1)
    out = tmp_path / "out"
    proc = run_cli(
        "tables",
        f"runs={tmp_path / 'runs'}",
        f"out={out}",
        "tables=[table1_cifar10]",
        "figures=false",
        "logger=wandb",
        cwd=tmp_path,
        env={"WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


def _with_metrics(run_dir: Path, epochs: int, final: float, best_epoch: int, best: float) -> None:
    """metrics.jsonl and result.json of a run of `epochs` epochs whose rows agree with its result."""
    rows = [
        {
            "epoch": e,
            "lr": 0.1,
            "train_loss": 1.0 / e,
            "test_error": best if e == best_epoch else final + e,
            "test_nll": 0.5,
        }
        for e in range(1, epochs + 1)
    ]
    rows[-1]["test_error"] = final if epochs != best_epoch else best
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = json.loads((run_dir / "result.json").read_text())
    result["epochs"] = epochs
    result["final"].update(epoch=epochs, test_error=rows[-1]["test_error"])
    result["best"].update(epoch=best_epoch, test_error=best)
    (run_dir / "result.json").write_text(json.dumps(result))


def _damage(run_dir: Path, what: str) -> None:
    result = json.loads((run_dir / "result.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if what == "seed is a string":
        result["run"]["seed"] = "1"
    elif what == "a row without epoch":
        del rows[1]["epoch"]
    elif what == "test_error null":
        rows[0]["test_error"] = None
    elif what == "test_error a string":
        rows[0]["test_error"] = "3.0"
    elif what == "negative NLL":
        result["final"]["test_nll"] = -0.1
    elif what == "best epoch past the epochs":
        result["best"]["epoch"] = 9
    elif what == "epochs unlike metrics.jsonl":
        rows = rows[:-1]
    elif what == "error above 100":
        rows[1]["test_error"] = 120.0
    (run_dir / "result.json").write_text(json.dumps(result))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


DAMAGE = {
    "seed is a string": "run.seed is '1', not an integer",
    "a row without epoch": "line 2 is epoch None, not 2",
    "test_error null": "epoch 1 test_error is None, not a finite number",
    "test_error a string": "epoch 1 test_error is '3.0', not a finite number",
    "negative NLL": "final.test_nll is -0.1, outside 0..inf",
    "best epoch past the epochs": "best.epoch is 9, not an integer in 1..3",
    "epochs unlike metrics.jsonl": "it holds 2 epoch rows, result.json 3 epochs",
    "error above 100": "epoch 2 test_error is 120.0, outside 0..100",
}


@pytest.mark.parametrize("what", list(DAMAGE))
def test_records_of_the_wrong_type_or_out_of_range_are_set_apart_and_tables_still_write_everything(tmp_path, what):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        _with_metrics(_record(runs, f"mm{seed}", "manifold", seed, 3.0, 2.5, 0.1), 3, 3.0, 2, 2.5)
    _damage(runs / "mm1", what)
    made = make_tables([runs], tmp_path / "out", ["table1_cifar10"], figures=True)
    assert [r.path.name for r in made["scan"].records] == ["mm0"]
    (line,) = made["scan"].malformed
    assert "mm1" in line and DAMAGE[what] in line, line
    out = tmp_path / "out"
    assert (out / "summary.md").exists() and (out / "curves" / "index.md").exists()
    assert len(list((out / "curves").glob("*.png"))) == 1


def test_curves_and_temporaries_of_an_earlier_tables_run_do_not_stay(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    _with_metrics(_record(runs, "mm", "manifold", 0, 3.0, 2.5, 0.1), 3, 3.0, 2, 2.5)
    _with_metrics(_record(runs, "erm", "erm", 0, 5.0, 4.5, 0.2), 3, 5.0, 2, 4.5)
    make_tables([runs], out, ["table1_cifar10"])
    assert len(list((out / "curves").glob("*.png"))) == 2
    (out / ".table1_cifar10.md.x1y2.tmp").write_text("half")  # a kill mid-write leaves these
    (out / "curves" / ".index.md.x3y4.tmp").write_text("half")
    import shutil

    shutil.rmtree(runs / "erm")
    make_tables([runs], out, ["table1_cifar10"])
    (curve,) = (out / "curves").glob("*.png")
    index = (out / "curves" / "index.md").read_text()
    assert curve.name in index and "erm" not in index and len(index.strip().splitlines()) == 3
    assert not list(out.rglob("*.tmp"))


def test_a_cell_counts_only_its_evaluated_runs_and_names_the_others(tmp_path):
    for seed in (0, 1):
        _record(tmp_path, f"erm{seed}", "erm", seed, 5.0, 5.0, 0.2)
    (tmp_path / "erm0" / "eval.json").write_text(json.dumps({"fgsm": {"normalized_eps0.03": {"accuracy": 40.0}}}))
    _, rows = make_tables([tmp_path], tmp_path / "out", ["table7_fgsm"], figures=False)["tables"]["table7_fgsm"]
    row = next(r for r in rows if r["method"] == "No Mixup" and r["dataset"] == "cifar10" and r["n"] != 0)
    assert (
        row["n"] == 1
        and row["ours fgsm_accuracy (final)"] == "40.00"
        and row["not evaluated"] == f"{tmp_path.name}/erm1"
    )


def test_the_sweep_summary_sets_runs_at_chance_apart_as_tables_does(tmp_path):
    from mm_repro.reports.summary import sweep_summary

    for seed in (0, 1):
        _record(tmp_path, f"chance{seed}", "erm", seed, 90.0, 90.0, 2.3)
    _record(tmp_path, "good", "manifold", 0, 3.0, 3.0, 0.1)
    text = sweep_summary(sorted(tmp_path.iterdir()))
    assert "2 at chance" in text and "are not averaged here, as in `tables`" in text
    assert "erm" not in text.split("are not averaged")[1] and "n=1: test error final 3.00" in text


def test_a_sweep_cell_shows_its_methods_on_one_axis(tmp_path):
    runs = tmp_path / "runs"
    for method in ("erm", "mixup", "manifold"):
        for seed in (0, 1):
            run_dir = _record(runs, f"{method}{seed}", method, seed, 3.0, 2.5, 0.1)
            _with_metrics(run_dir, 3, 3.0 + seed, 2, 2.5)
    made = make_tables([runs], tmp_path / "out", ["table1_cifar10"])
    (figure,) = (tmp_path / "out" / "comparisons").glob("*.png")
    index = (tmp_path / "out" / "comparisons" / "index.md").read_text()
    assert figure.name in index and "No Mixup (2), Input Mixup (α = 1) (2), Manifold Mixup (α = 2) (2)" in index
    assert made["scan"].records and figure.stat().st_size > 20_000


@pytest.mark.parametrize(("epochs", "seeds"), [(1, 1), (1, 3), (6, 1), (6, 3)])
def test_every_curve_shows_its_points_and_promises_no_band_it_cannot_draw(epochs, seeds):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mm_repro.reports.curves import draw_curve

    fig, ax = plt.subplots()
    xs = list(range(1, epochs + 1))
    draw_curve(ax, xs, [50.0 - e for e in xs], [1.0] * epochs, seeds, f"manifold mixup (n={seeds})")
    ax.legend()
    line = ax.get_lines()[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert line.get_marker() == "o"  # at most a dozen points: each one drawn (one epoch is one visible point)
    assert any("± 1 std" in label for label in labels) == (seeds > 1)  # a band only where seeds give a spread
    assert len(ax.collections) == (1 if seeds > 1 else 0)  # the band, or at one epoch its error bar
    low, high = ax.get_xlim()
    assert low < xs[0] and high > xs[-1] and high - low >= 2  # the points inside the axis, not on its edges
    plt.close(fig)


def test_a_one_epoch_sweeps_figures_are_drawn_with_their_points(tmp_path):
    for seed, method in ((0, "erm"), (0, "manifold"), (1, "manifold")):
        d = _record(tmp_path / "runs", f"{method}{seed}", method, seed, 40.0 + seed, 40.0 + seed, 1.2, epochs=1)
        result = json.loads((d / "result.json").read_text())
        result["final"]["epoch"] = result["best"]["epoch"] = 1
        (d / "result.json").write_text(json.dumps(result))
        row = {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "test_error": 40.0 + seed, "test_nll": 1.2}
        (d / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    from mm_repro.reports.curves import plot_comparisons, plot_learning_curves

    records = scan([tmp_path / "runs"]).records
    assert len(plot_comparisons(records, tmp_path / "out")) == 1
    plot_learning_curves(records, tmp_path / "out")
    assert len(list((tmp_path / "out" / "curves").glob("*.png"))) == 2
