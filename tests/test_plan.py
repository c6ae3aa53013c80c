"""`python -m mm_repro plan`: a sweep's jobs, its packs and the device-hours estimated from the user's bench figures,
without training or writing anything; refused jobs named, with exit code 2."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_cli

SWEEP = ["dataset=synthetic", "model.width=4", "train.epochs=5", "train.milestones=[]", "logger=none", "device=cpu"]


def _bench_figure(path, **keys) -> None:
    """A bench-cpu.json as `bench` writes it (the keys `plan` reads; test_speed runs bench itself and plans on it)."""
    figure = {"device": "cpu", "model": "preactresnet18", "width": 4, "batch_size": 100, "precision": "fp32",
              "compile": False, "method": "manifold", "ours_images_per_second": 1.0, "epoch_overhead": 0.5,
              "pack": 2, "packed_images_per_second": 1.5, **keys}  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    (path / "bench-cpu.json").write_text(json.dumps(figure))


def _files(root) -> list:
    return sorted(p.relative_to(root) for p in root.rglob("*"))


@pytest.mark.slow  # ~9 s: runs plan over a sweep
def test_plan_lists_the_packs_and_estimates_hours_from_the_bench_figures_without_writing(tmp_path):
    _bench_figure(tmp_path / "mine")
    before = _files(tmp_path)
    proc = run_cli(
        "plan", *SWEEP, "seed=0,1,2", "method=erm,manifold", "hydra/launcher=packed", "hydra.launcher.max_pack=2",
        f"bench={tmp_path / 'mine'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "plan: 6 jobs under hydra/launcher=packed (max_pack 2): 3 device jobs; nothing is trained" in out
    assert len(re.findall(r"^device job \d: 2 run\(s\), 5 epochs left", out, re.M)) == 3
    # a pack of 2 with a pack=2 figure: 2 runs x 2000 images / 1.5 img/s x 1.5 x 5 epochs = 5.6 h per device job
    assert out.count("~5.6 CPU-hours") == 3 and "packed 2: 2 img/s" in out and "estimated: ~16.7 CPU-hours" in out
    assert _files(tmp_path) == before  # nothing written: no runs/, no .failures/, no multirun.yaml

    alone = run_cli("plan", *SWEEP, "seed=0,1,2", f"bench={tmp_path / 'mine'}", cwd=tmp_path)
    assert alone.returncode == 0 and alone.stdout.count("~4.2 CPU-hours (") == 3  # 2000 / 1.0 x 1.5 x 5 epochs
    assert "hydra/launcher=basic: 3 device jobs" in alone.stdout


def test_plan_says_what_it_lacks_and_names_refused_jobs(tmp_path):
    _bench_figure(tmp_path / "mine", width=8)  # another width: no figure matches
    proc = run_cli("plan", *SWEEP, "method.alpha=-1,1", "method=mixup", f"bench={tmp_path / 'mine'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        "#0 method.alpha=-1 refused, would fail at once: method.alpha=-1.0 must be a finite number > 0" in proc.stdout
    )
    assert "no bench figure for `bench device=cpu model=preactresnet18 model.width=4 batch_size=100" in proc.stdout
    assert proc.stderr.strip() == "error: 1 of 2 jobs would be refused at once (listed above)"
    none = run_cli("plan", *SWEEP, f"bench={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert none.returncode == 0 and "no bench figures under" in none.stdout


@pytest.mark.slow  # ~9 s
def test_plan_without_bench_figures_gives_the_docs_estimate_labelled_as_one(tmp_path):
    # Table 1(a)'s PreActResNet-18: 2000 epochs of CIFAR-10's 50k images at the assumed 20k img/s = 1.4 h, as
    # docs/reproducing.md's table assumes (its ~90 GPU-hours for the table's 45 runs)
    one = ["plan", "experiment=table1_cifar10", "model=preactresnet18", "method=erm", "seed=0"]
    proc = run_cli(*one, f"bench={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "device job 1: 1 run(s), 2000 epochs left: ~1.4 GPU-hours, ESTIMATE at an assumed 20000 img/s" in proc.stdout
    assert "estimated: ~1.4 GPU-hours at assumed speeds (an ESTIMATE" in proc.stdout
    cpu = run_cli(*one, "device=cpu", f"bench={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert "estimated: no estimate (no bench figures under" in cpu.stdout  # no speed is assumed for a CPU


@pytest.mark.slow
def test_plan_reads_a_finished_run_as_complete(tmp_path):
    args = [*SWEEP, "dataset.train_size=200", "dataset.test_size=50", "train.epochs=1", "seed=0"]
    assert run_cli("train", "-m", *args, cwd=tmp_path).returncode == 0
    proc = run_cli("plan", *args, "seed=0,1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[complete]" in proc.stdout and "[new]" in proc.stdout
    # the same directory asked for with another config: `train -m` refuses it, so plan does, naming the key
    moved = run_cli("plan", *args, "train.lr=0.05", "hydra.sweep.subdir=" + _subdir(tmp_path), cwd=tmp_path)
    assert moved.returncode == 2 and "refused, would fail at once" in moved.stdout
    assert "train.lr: 0.1 -> 0.05" in moved.stdout


FIGURE = {"device": "cpu", "model": "preactresnet18", "width": 4, "batch_size": 100, "precision": "fp32"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "is not a JSON object"),
        ('{"device": "cpu"}', "model is None, not a string"),
        (json.dumps({**FIGURE, "ours_images_per_second": 0}), "ours_images_per_second is 0, not a finite number > 0"),
        (json.dumps(FIGURE).replace("}", ', "ours_images_per_second": NaN}'), "NaN is not a number JSON allows"),
        ("{not json", "is not JSON"),
    ],
)
def test_a_bench_figure_plan_cannot_use_is_one_line(tmp_path, monkeypatch, capsys, content, message):
    from mm_repro.cli import main

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "bench-cpu.json").write_text(content)
    monkeypatch.chdir(tmp_path)
    assert main(["plan", *SWEEP, f"bench={tmp_path / 'mine'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"bench figure {tmp_path / 'mine' / 'bench-cpu.json'}: {message}" in err, err


def _subdir(root) -> str:
    """The sweep subdirectory of the one finished run under root/runs (quoted for Hydra: it holds `=` and `,`)."""
    (result,) = (root / "runs").rglob("result.json")
    return "'" + str(result.parent.relative_to(root / "runs")) + "'"
