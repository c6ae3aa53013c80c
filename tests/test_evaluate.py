"""The evaluations: FGSM at eps 0 and eps > 0, deformations at magnitude 0 and a 90-degree rotation, ECE of a
calibrated toy, flattening against numpy's SVD; `evaluate` and `spiral` through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mm_repro.evaluation.measures import (
    affine,
    deform,
    deformation_names,
    expected_calibration_error,
    fgsm,
    flattening,
    knn_errors,
    pgd,
    rotation_matrices,
    singular_values,
)
from mm_repro.models import build
from tests.conftest import TINY, data_args, run_cli, tiny_job, train_args

MEAN = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1)
STD = torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)


@pytest.mark.parametrize("space", ["normalized", "pixel"])
def test_fgsm_with_eps_zero_is_clean_and_eps_positive_raises_the_loss(space):
    torch.manual_seed(0)
    model = build("preactresnet18", 10, width=4).eval()
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    clean = (x - MEAN) / STD
    same = fgsm(model, x, y, 0.0, space, MEAN, STD, 10)
    torch.testing.assert_close(same, clean)
    adv = fgsm(model, x, y, 0.03, space, MEAN, STD, 10)
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(clean), y)
    if space == "pixel":
        pixels = adv * STD + MEAN
        assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_bounded_pgd_stays_in_its_ball_and_beats_one_step():
    torch.manual_seed(0)
    model = build("preactresnet18", 10, width=4).eval()
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    eps = 8 / 255
    adv = pgd(model, x, y, 10, eps / 4, eps, "pixel", MEAN, STD, 10)
    pixels = adv * STD + MEAN
    assert (pixels - x).abs().max() <= eps + 1e-5 and pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    one = fgsm(model, x, y, eps / 4, "pixel", MEAN, STD, 10)
    with torch.no_grad():
        assert (
            F.cross_entropy(model(adv), y)
            > F.cross_entropy(model(one), y)
            > F.cross_entropy(model((x - MEAN) / STD), y)
        )
    # unbounded (App. D): nothing holds the steps back, so it moves by steps * step_size in every coordinate
    free = pgd(model, x, y, 50, 0.01, None, "normalized", MEAN, STD, 10)
    assert (free - (x - MEAN) / STD).abs().max() > 0.25


def test_knn_equals_a_brute_force_vote():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 6))
    train_labels = rng.integers(0, 4, 200)
    train[:, 0] += 2 * train_labels  # classes separated along one axis, with overlap
    test = rng.normal(size=(70, 6))
    test_labels = rng.integers(0, 4, 70)
    test[:, 0] += 2 * test_labels
    ours = knn_errors(
        torch.tensor(train), torch.tensor(train_labels), torch.tensor(test), torch.tensor(test_labels), [1, 5, 20]
    )
    for k in (1, 5, 20):
        distances = ((test[:, None] - train[None]) ** 2).sum(2)
        nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
        votes = np.array([np.bincount(train_labels[row], minlength=4).argmax() for row in nearest])
        assert ours[k] == pytest.approx(100 * np.mean(votes != test_labels))
    assert 0 < ours[5] < 50  # better than chance (75 %), not perfect


@pytest.mark.parametrize(("kind", "identity"), [("rotation", 0.0), ("shear", 0.0), ("zoom", 1.0)])
def test_deformation_of_magnitude_zero_leaves_images_unchanged(kind, identity):
    x = torch.rand(5, 3, 32, 32)
    out = deform(x, kind, identity, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def test_rotation_by_90_degrees_equals_rot90_and_zoom_out_fills_black():
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(
        affine(x, rotation_matrices(torch.full((3,), 90.0))), torch.rot90(x, 1, (-2, -1)), rtol=0, atol=1e-5
    )
    out = deform(x, "zoom", 1.8, torch.Generator().manual_seed(0))
    assert out[..., :4, :].abs().max() == 0 and out[..., 14:18, 14:18].abs().max() > 0
    names = [n for n, _, _ in deformation_names()]
    assert len(names) == 17 and names[0] == "rotation_20" and "shear_2.5" in names and names[-1] == "zoom_1.8"


def test_random_deformations_are_seeded():
    x = torch.rand(4, 3, 32, 32)
    a = deform(x, "shear", 1.0, torch.Generator().manual_seed(3))
    b = deform(x, "shear", 1.0, torch.Generator().manual_seed(3))
    c = deform(x, "shear", 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ece_of_a_perfectly_calibrated_toy_is_zero_and_of_an_overconfident_one_is_not():
    probs = torch.tensor([[0.8, 0.2]] * 10 + [[0.3, 0.7]] * 10, dtype=torch.float64)
    labels = torch.tensor([0] * 8 + [1] * 2 + [1] * 7 + [0] * 3)
    assert expected_calibration_error(probs, labels)["ece"] == pytest.approx(0.0, abs=1e-12)
    over = torch.tensor([[0.99, 0.01]] * 10)
    result = expected_calibration_error(over, torch.tensor([0] * 5 + [1] * 5))
    assert result["ece"] == pytest.approx(0.49)


def test_flattening_figures_equal_numpys_svd():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(30, 4, 3, 3, generator=g)
    labels = torch.tensor([0] * 12 + [1] * 18)
    result = flattening(hidden, labels)
    for entry, c in zip(result["per_class"], (0, 1), strict=True):
        s = np.linalg.svd(hidden[labels == c].flatten(1).numpy().astype(np.float64), compute_uv=False)
        assert entry["top"] == pytest.approx(s[0], rel=1e-9)
        assert entry["rest"] == pytest.approx(s[1:].sum(), rel=1e-9)
    wide = torch.randn(5, 40, generator=g)
    np.testing.assert_allclose(singular_values(wide), np.linalg.svd(wide.double().numpy(), compute_uv=False), rtol=1e-9)


@pytest.mark.slow
def test_evaluate_the_directory_train_made_then_tables_shows_it(cifar100_root, tmp_path):
    # the run directory is the one train names itself (runs/<...>/dataset=...,method=...,...), passed as the README
    # writes it: `evaluate run=DIR`, with its `=` and `,`
    proc = run_cli(
        "train",
        *data_args(cifar100_root, "cifar100"),
        "model=preactresnet34",
        "method=manifold",
        "protocol=paper",
        *TINY,
        "train.epochs=1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = [p.parent for p in (tmp_path / "runs").rglob("result.json")]
    assert "=" in run_dir.name and "," in run_dir.name
    relative = run_dir.relative_to(tmp_path)
    proc = run_cli("evaluate", f"run={relative}", "batch_size=50", "flattening_max_per_class=5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run_dir / "eval.json").read_text())
    assert set(result["fgsm"]) == {"normalized_eps0.03", "pixel_eps0.0313725"}
    assert {"rotation_20", "shear_0.5", "zoom_1.2"} <= set(result["deformations"])
    assert 0 <= result["calibration"]["ece"] <= 1 and (run_dir / "reliability.png").exists()
    assert set(result["flattening"]) >= {"k0", "k1", "k4"} and (run_dir / "flattening.png").exists()
    assert "FGSM normalized_eps0.03" in proc.stdout
    # a second, partial suite merges into eval.json instead of replacing it
    again = run_cli("evaluate", f"run={relative}", "suite=[calibration]", "batch_size=50", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    merged = json.loads((run_dir / "eval.json").read_text())
    assert merged["fgsm"] == result["fgsm"] and merged["deformations"] == result["deformations"]
    tables = run_cli(
        "tables",
        f"runs={tmp_path}",
        f"out={tmp_path / 'tables'}",
        "tables=[table9_deformations]",
        "include_chance=true",  # one tiny epoch on 100 classes: at chance, and counted only when asked
        cwd=tmp_path,
    )
    assert tables.returncode == 0, tables.stderr
    ours = f"{result['deformations']['rotation_20']['accuracy']:.2f}"
    row = next(line for line in tables.stdout.splitlines() if "Manifold Mixup" in line and "Rotation U(−20°" in line)
    assert f"| 1 | — | 60.08 | {ours} |" in row  # n, not evaluated, paper, ours


@pytest.mark.slow
def test_evaluate_knn_and_pgd_and_refuses_knn_without_the_training_split(cifar10_root, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    proc = run_cli(*train_args(cifar10_root, run_dir, "train.epochs=1"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    args = ["evaluate", f"run={run_dir}", "suite=[knn,pgd]", "batch_size=50", "pgd_steps_normalized=3"]
    proc = run_cli(*args, "pgd_steps_pixel=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run_dir / "eval.json").read_text())
    assert set(result["knn"]) >= {"k1", "k5", "k20"} and result["knn"]["train_images"] == 200
    assert set(result["pgd"]) == {"normalized_unbounded_steps3_step0.01", "pixel_eps0.03137_steps3"}
    assert "k-NN error,   5 neighbours" in proc.stdout and "PGD normalized_unbounded_steps3" in proc.stdout
    # the same run, its data without the training batches: one line, and eval.json untouched
    partial = tmp_path / "test-only"
    shutil.copytree(cifar10_root, partial)
    for batch in (partial / "cifar-10-batches-py").glob("data_batch_*"):
        batch.unlink()
    before = (run_dir / "eval.json").read_text()
    refused = run_cli(*args, f"dataset_root={partial}", cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "its data cannot be read" in refused.stderr and "data_batch_1" in refused.stderr
    assert "suite=[knn] its training split too" in refused.stderr
    assert (run_dir / "eval.json").read_text() == before


@pytest.mark.slow
def test_evaluate_refuses_what_is_not_a_finished_run(cifar10_root, tmp_path):
    missing = run_cli("evaluate", f"run={tmp_path / 'nothing'}", cwd=tmp_path)
    assert missing.returncode == 2 and "no .hydra/config.yaml" in missing.stderr
    run_dir = tmp_path / "run"
    proc = run_cli(*train_args(cifar10_root, run_dir, "train.epochs=1"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir / "result.json").rename(run_dir / "result.json.away")
    unfinished = run_cli("evaluate", f"run={run_dir}", cwd=tmp_path)
    assert (
        unfinished.returncode == 2
        and "has not finished (it was stopped: its checkpoint is there): no result.json" in unfinished.stderr
    )
    (run_dir / "result.json.away").rename(run_dir / "result.json")
    (run_dir / "failure.json").write_text(json.dumps({"status": "diverged", "message": "x"}))
    failed = run_cli("evaluate", f"run={run_dir}", cwd=tmp_path)
    assert failed.returncode == 2 and "diverged (see its failure.json)" in failed.stderr
    assert not (run_dir / "eval.json").exists()


@pytest.mark.slow
def test_spiral_at_reduced_size_writes_figures_and_json(tmp_path):
    args = ["points=150", "steps=300", "grid=40", "width=16", "seeds=[0,1]"]
    proc = run_cli("spiral", f"out={tmp_path}", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "spiral.json").read_text())
    assert set(result["results"]) == {"ERM", "Manifold Mixup"} and result["seeds"] == [0, 1]
    assert [c["claim"].split(" (")[0] for c in result["claims"]] == [
        "a smoother decision boundary", "flatter classes at the bottleneck than ERM's",
        "a broader low-confidence region in the hidden space than ERM's",
    ]  # fmt: skip
    for claim in result["claims"]:  # each decided by the rule, over the two seeds
        assert claim["rule"] == "welch-0.05" and claim["n"] == {"ERM": 2, "Manifold Mixup": 2}
        assert claim["verdict"] in ("holds", "does not hold", "not resolved")
    assert all(r["train_accuracy"] > 60 for r in result["results"]["ERM"])  # it learned the spirals at least partly
    assert result["results"]["ERM"][0] != result["results"]["ERM"][1]  # each seed its own data and nets
    for name in result["figures"]:
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.slow
def test_spiral_figure_2_trains_every_regularizer_beside_figure_1s(tmp_path):
    args = ["points=100", "steps=100", "grid=30", "width=16", "regularizers=true"]
    proc = run_cli("spiral", f"out={tmp_path}", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "spiral_figure2.json").read_text())
    assert set(result["results"]) == {
        "ERM", "Manifold Mixup", "Weight decay", "Input noise", "Dropout", "BatchNorm", "Input Mixup"
    }  # fmt: skip
    only = result["claims"][-1]
    assert only["claim"].startswith("of Figure 2's regularizers, only manifold mixup") and len(only["parts"]) == 6
    assert not (tmp_path / "spiral.json").exists()  # Figure 1's records are not overwritten
    for name in result["figures"]:
        assert name.startswith("spiral_figure2_") and (tmp_path / name).stat().st_size > 10_000


def test_the_spiral_net_is_the_mlp_family_with_a_linear_bottleneck():
    from mm_repro.experiments.spiral import BOTTLENECK, VARIANTS, spiral_net

    net = spiral_net(8, dropout=0.5, batch_norm=True)
    assert net.widths == [8, 8, 2, 8, 8] and net.bottleneck == BOTTLENECK == 3
    assert isinstance(net.norms[2], torch.nn.Identity) and isinstance(net.norms[0], torch.nn.BatchNorm1d)
    assert VARIANTS["Manifold Mixup"][2] == (3,) and VARIANTS["Input Mixup"][2] == (0,)


@pytest.mark.slow
def test_best_checkpoint_is_kept_and_evaluate_reads_it(cifar10_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*train_args(cifar10_root, run_dir, "train.epochs=4", "train.lr=0.5"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run_dir / "result.json").read_text())
    from mm_repro.records import load_checkpoint

    best = load_checkpoint(run_dir / "checkpoints" / "best.pt", resumable=False)
    assert best["epoch"] == result["best"]["epoch"] and best["test_error"] == result["best"]["test_error"]
    assert best["run_id"] == result["run_id"]
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    if best["epoch"] != last["epoch"]:  # an earlier epoch's weights, not the final ones
        assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    proc = run_cli("evaluate", f"run={run_dir}", "checkpoint=best", "suite=[calibration]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads((run_dir / "eval_best.json").read_text())
    assert evaluated["checkpoint"] == "best" and evaluated["checkpoint_epoch"] == best["epoch"]
    assert evaluated["clean"]["accuracy"] == pytest.approx(100 - best["test_error"], abs=100 / 40 + 1e-9)
    assert (run_dir / "best_reliability.png").exists() and not (run_dir / "eval.json").exists()
    wrong = run_cli("evaluate", f"run={run_dir}", "checkpoint=first", cwd=tmp_path)
    assert wrong.returncode == 2 and "checkpoint='first' is not allowed; choose one of last, best" in wrong.stderr


def test_the_reliability_table_and_plot_hold_only_bins_with_images(tmp_path):
    from mm_repro.evaluation.report import plot_reliability

    probs = torch.tensor([[0.95, 0.05], [0.96, 0.04], [0.55, 0.45]])  # confidences in 2 of the 15 bins
    calibration = expected_calibration_error(probs, torch.tensor([0, 1, 0]), bins=15)
    assert [b["count"] for b in calibration["table"]] == [1, 2]  # no entry, so no bar at accuracy 0, for empty bins
    name = plot_reliability(calibration, tmp_path / "r.png", "sweep/run (last checkpoint)")
    assert (tmp_path / name).stat().st_size > 5_000


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from mm_repro.training.loop import train_jobs

    run_dir = tmp_path_factory.mktemp("evaluated") / "run"
    train_jobs([tiny_job(run_dir)])
    return run_dir


def _evaluate(run_dir, **options):
    from mm_repro.config import EvalConfig
    from mm_repro.evaluation.evaluate import evaluate_run

    return evaluate_run(EvalConfig(run=str(run_dir), device="cpu", **options))


def test_a_second_fgsm_call_adds_its_eps_and_keeps_the_earlier_ones(finished_run):
    _evaluate(finished_run, suite=["fgsm"], fgsm_eps_normalized=[0.03], fgsm_eps_pixel=[0.01])
    out = _evaluate(finished_run, suite=["fgsm"], fgsm_eps_normalized=[0.05], fgsm_eps_pixel=[0.02])
    saved = json.loads((finished_run / "eval.json").read_text())
    assert set(saved["fgsm"]) == {"normalized_eps0.03", "normalized_eps0.05", "pixel_eps0.01", "pixel_eps0.02"}
    assert out["written"] == str(finished_run / "eval.json")


def test_a_failing_evaluation_leaves_no_new_figure_beside_old_numbers(finished_run, monkeypatch):
    from mm_repro.evaluation import evaluate

    (finished_run / "reliability.png").unlink(missing_ok=True)
    before = (finished_run / "eval.json").read_text() if (finished_run / "eval.json").exists() else None
    monkeypatch.setitem(evaluate.EVALUATIONS, "fgsm", lambda e: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        _evaluate(finished_run, suite=["calibration", "fgsm"])
    assert not (finished_run / "reliability.png").exists()
    assert ((finished_run / "eval.json").read_text() if before is not None else None) == before


def test_the_best_checkpoints_evaluation_says_where_it_went(finished_run, capsys, monkeypatch):
    from mm_repro.cli import main

    monkeypatch.chdir(finished_run.parent)
    assert main(["evaluate", f"run={finished_run}", "checkpoint=best", "suite=[fgsm]", "device=cpu"]) == 0
    assert f"written: {finished_run / 'eval_best.json'}" in capsys.readouterr().out


def test_a_run_directory_that_cannot_be_written_is_one_line_and_exit_2(finished_run, capsys, monkeypatch):
    import os

    from mm_repro.cli import main

    if os.geteuid() == 0:  # root writes through any mode bits: make the write itself fail as a read-only disk does
        from mm_repro import records

        def read_only(path, obj):
            raise OSError(30, "Read-only file system", str(path))

        monkeypatch.setattr(records, "write_json", read_only)
    else:
        finished_run.chmod(0o555)
    try:
        code = main(["evaluate", f"run={finished_run}", "suite=[fgsm]", "device=cpu"])
    finally:
        finished_run.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot write") and err.count("\n") == 1, err
