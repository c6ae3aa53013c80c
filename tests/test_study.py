"""A study's runs as one Hydra sweep (mm_repro.sweeps.study, hydra/sweeper=listed): `flattening` and `synthetic` train
their nets in parallel through Hydra's launchers, each net bitwise the net trained alone at the same thread count; a
failed net is named in one line and the others kept; a stopped study resumes, reusing what finished."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from mm_repro import records
from mm_repro.errors import UserError
from mm_repro.sweeps.study import Launch, _job_errors, launcher_overrides, read_jobs
from tests.conftest import popen_cli, run_cli, wait_for, write_mnist

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("mnist"), n_train=200, n_test=60)


def _study(root: Path, out: Path, *extra: str) -> list[str]:
    return ["flattening", "study=section3_2", f"dataset_root={root}", "download=false", "epochs=2", "width=16",
            "lr=0.003", "svd_per_class=6", f"out={out}", *extra]  # fmt: skip


def _weights(run_dir: Path) -> dict:
    return records.load_checkpoint(run_dir / records.CHECKPOINT)["model"]


def test_a_listed_sweep_reads_its_jobs_and_refuses_a_bad_file(tmp_path):
    good = tmp_path / "jobs.yaml"
    good.write_text("- [seed=0, method=erm]\n- [seed=1]\n")
    assert read_jobs(good) == [["seed=0", "method=erm"], ["seed=1"]]
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\n")
    with pytest.raises(UserError, match="must hold a list of jobs"):
        read_jobs(bad)


def test_the_launchers_a_study_offers_are_hydras():
    assert Launch("local", 3).hydra_args() == ["hydra/launcher=local", "hydra.launcher.n_jobs=3"]
    assert Launch("local").jobs_at_a_time == os.cpu_count()
    slurm = Launch("slurm", 4, tuple(launcher_overrides({"partition": "cpu"}))).hydra_args()
    assert slurm[0] == "hydra/launcher=slurm" and "hydra.launcher.gpus_per_node=0" in slurm
    assert slurm[-1] == "hydra.launcher.partition=cpu"  # the user's options come last, so they win
    assert Launch("basic").hydra_args() == []


def test_a_sweeps_error_lines_are_read_back_by_job():
    text = "noise\nerror: job 3 (seed=0 dataset.root='a b'): checkpoint x is corrupt\nerror: 2 jobs failed\n"
    assert _job_errors(text) == {3: "checkpoint x is corrupt"}


@pytest.mark.slow  # a sweep of five nets and a lone train: ~40 s
def test_a_studys_nets_train_in_parallel_and_each_is_the_net_trained_alone(tmp_path, mnist_root):
    out = tmp_path / "study"
    proc = run_cli(*_study(mnist_root, out, "workers=2"), cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "flattening_section3_2.json").read_text())
    assert report["provenance"]["nets"] == "5 trained 2 at a time (Hydra's joblib launcher), 1 thread(s) each"
    assert "5 trained 2 at a time" in (out / "flattening_section3_2.md").read_text()  # the report says how
    assert (out / "runs" / "multirun.yaml").exists() and (out / "runs" / "jobs.yaml").exists()
    # the manifold mixup net, trained alone by `train` with the same overrides at the same thread count
    net = out / "runs" / "mlp_section3_2-manifold_mixup" / "seed0"
    (job,) = [j for j in read_jobs(out / "runs" / "jobs.yaml") if "method=manifold" in j]
    alone = tmp_path / "alone"
    overrides = [o for o in job if not o.startswith("hydra.sweep.subdir")]
    assert run_cli("train", *overrides, f"hydra.run.dir={alone}", cwd=tmp_path, env=ONE_THREAD).returncode == 0
    a, b = _weights(net), _weights(alone)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # rerun: every net is reused, nothing retrained
    again = run_cli(*_study(mnist_root, out, "workers=2"), cwd=tmp_path, env=ONE_THREAD)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "flattening_section3_2.json").read_text())["provenance"]["nets"].startswith("all reused")


@pytest.mark.slow
def test_a_failed_net_is_named_in_one_line_and_the_others_are_kept(tmp_path, mnist_root):
    out = tmp_path / "study"
    broken = out / "runs" / "mlp_section3_2-dropout" / "seed0" / "checkpoints"
    broken.mkdir(parents=True)
    (broken / "last.pt").write_bytes(b"not a checkpoint")
    proc = run_cli(*_study(mnist_root, out, "workers=2"), cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: 1 of the nets failed (above); the 4 that finished are kept")
    (named,) = [line for line in lines if line.startswith("error: mlp_section3_2-dropout, seed 0: checkpoint")]
    assert named.endswith(f"({broken.parent})") and "corrupt" in named
    done = sorted(p.parent.parent.name for p in (out / "runs").glob("*/seed0/result.json"))
    assert done == ["mlp_section3_2-baseline", "mlp_section3_2-input_mixup", "mlp_section3_2-manifold_mixup",
                    "mlp_section3_2-weight_decay"]  # fmt: skip
    assert not (out / "flattening_section3_2.json").exists()  # no report of a study with a net missing


@pytest.mark.slow
def test_a_stopped_study_stops_every_net_and_resumes_where_they_stopped(tmp_path, mnist_root):
    out = tmp_path / "study"
    args = _study(mnist_root, out, "workers=2", "epochs=40")
    proc = popen_cli(args, tmp_path)
    wait_for(lambda: len(list((out / "runs").glob("*/seed0/checkpoints/last.pt"))) >= 1, proc, "a checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    assert "flattening section3_2: stopped" in err and "Rerun the same command to resume" in err
    stopped = [p for p in (out / "runs").glob("*/seed0") if (p / records.CHECKPOINT).exists()]
    assert stopped and not any((p / records.RESULT).exists() for p in stopped)
    resumed = run_cli(*args, cwd=tmp_path, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for p in stopped:
        assert "resuming" in (p / records.TRAIN_LOG).read_text()
        assert json.loads((p / records.RESULT).read_text())["epochs"] == 40


@pytest.mark.slow  # six classifiers of 20 steps, two at a time, and one alone: ~60 s
def test_a_table8_tasks_classifiers_train_in_parallel_and_each_is_the_classifier_trained_alone(tmp_path):
    out = tmp_path / "task"
    args = ["synthetic", "task=A", "seeds=[0,1]", "steps=20", "test_batches=2", "device=cpu", f"out={out}"]
    proc = run_cli(*args, "workers=2", cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "table8_taskA.json").read_text())
    assert (
        report["provenance"]["classifiers"]
        == "6 trained 2 at a time (Hydra's joblib launcher), 1 thread(s) each, 0 reused"
    )
    assert len(report["results"]) == 6 and [c["rule"] for c in report["claims"]] == ["welch-0.05"] * 2
    alone = tmp_path / "alone"
    one = run_cli("synthetic", "task=A", "classifier=factor", "seeds=[1]", "steps=20", "test_batches=2", "device=cpu",
                  f"out={alone}", cwd=tmp_path, env=ONE_THREAD)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    mine = json.loads((alone / "classifier.json").read_text())["result"]
    assert mine == json.loads((out / "runs" / "taskA" / "factor" / "seed1" / "classifier.json").read_text())["result"]
    changed = run_cli(*args, "steps=21", cwd=tmp_path)  # a finished classifier of another config is never reused
    assert changed.returncode == 2 and "holds a classifier made otherwise (steps: 20 -> 21)" in changed.stderr
