"""End to end through the CLI, as a user runs it: records, resume after a kill, smoke, W&B offline, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, run_cli

records_ckpt = "checkpoints/last.pt"
TIMING = {"seconds", "images_per_second", "wall_seconds"}


def _train_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "train",
        "dataset=cifar10",
        f"dataset.root={root}",
        "dataset.download=false",
        *TINY,
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def test_three_epoch_run_on_real_format_files_writes_every_record(cifar10_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*_train_args(cifar10_root, run_dir, "train.epochs=3", "train.milestones=[2]"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "epoch" in proc.stdout and "test_err%" in proc.stdout
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "train.log").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.01])
    assert set(rows[0]) >= {"epoch", "lr", "train_loss", "test_error", "test_nll", "seconds", "images_per_second"}
    result = json.loads((run_dir / "result.json").read_text())
    assert result["final"]["test_error"] == rows[-1]["test_error"]
    assert result["best"]["test_error"] == min(r["test_error"] for r in rows)
    assert result["params"] > 0 and result["epochs"] == 3 and result["device"] == "cpu"
    assert result["torch_version"] == torch.__version__ and "git_commit" in result
    assert result["run"]["method"] == "manifold" and result["run"]["layers"] == [0, 1, 2]
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 3 and set(ckpt["rng"]) >= {"python", "numpy", "torch"}
    assert {"model", "optimizer", "scheduler"} <= set(ckpt)


def _wait_for_epoch(run_dir: Path, epoch: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epoch and (run_dir / records_ckpt).exists():
            return
        time.sleep(0.02)
    raise AssertionError(f"epoch {epoch} never finished")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_run_killed_in_epoch_2_of_4_resumes_to_the_same_weights_and_records(cifar10_root, tmp_path, sig):
    extra = ("train.epochs=4", "train.milestones=[2,3]", "train.batch_size=10")
    unbroken = tmp_path / "unbroken"
    assert run_cli(*_train_args(cifar10_root, unbroken, *extra), cwd=tmp_path).returncode == 0

    broken = tmp_path / "broken"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mm_repro", *_train_args(cifar10_root, broken, *extra)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_epoch(broken, 1, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 75, err
        assert "rerun the same command to resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (broken / "result.json").exists()
    resumed = run_cli(*_train_args(cifar10_root, broken, *extra), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout

    a = torch.load(unbroken / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(broken / "checkpoints" / "last.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for name in ("result.json",):
        ra, rb = (json.loads((d / name).read_text()) for d in (unbroken, broken))
        assert _without_timing(ra) == _without_timing(rb)
    rows = [_without_timing(json.loads(line)) for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert rows == [_without_timing(json.loads(line)) for line in (unbroken / "metrics.jsonl").read_text().splitlines()]


def test_smoke_experiment_runs_offline_and_learns(tmp_path):
    proc = run_cli("train", "experiment=smoke", f"hydra.run.dir={tmp_path / 'smoke'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "smoke" / "result.json").read_text())
    assert result["run"]["dataset"] == "synthetic" and result["epochs"] == 3
    assert result["final"]["test_error"] < 60  # chance is 90 %


def test_wandb_offline_run_writes_its_files_into_the_run_directory(cifar10_root, tmp_path):
    run_dir = tmp_path / "wb"
    args = [a for a in _train_args(cifar10_root, run_dir, "train.epochs=1") if a != "logger=none"]
    proc = run_cli(*args, "logger=wandb", cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("run-*.wandb"))
    assert (run_dir / "wandb_id").read_text().strip() in offline_runs[0].name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchcommand"], "unknown command 'nosuchcommand'"),
        (["train", "model=resnet9"], "model='resnet9' is not an option; choose one of: preactresnet101"),
        (["train", "method.alpha=0", "dataset=synthetic"], "method.alpha=0.0 must be > 0"),
        (["train", "dataset=cifar10", "dataset.download=false", "dataset.root=nodata"], "missing cifar-10-batches-py"),
        (["train", "train.epochs=abc"], "config key train.epochs"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, args, message):
    proc = run_cli(*args, "logger=none", cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    if args[0] == "train":
        assert len(proc.stderr.strip().splitlines()) == 1


def test_unwritable_run_directory_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a regular file, so nothing can be created beneath it, even by root")
    proc = run_cli("train", "experiment=smoke", f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(blocker / "run") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_corrupt_checkpoint_is_a_clear_error_and_is_never_overwritten(cifar10_root, tmp_path):
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    proc = run_cli(*_train_args(cifar10_root, run_dir, "train.epochs=1"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"checkpoint {ckpt} is corrupt" in proc.stderr and "train.resume=false" in proc.stderr
    assert ckpt.read_bytes() == b"not a checkpoint"

    fresh = run_cli(*_train_args(cifar10_root, run_dir, "train.epochs=1", "train.resume=false"), cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    kept = list((run_dir / "previous").glob("*/checkpoints/last.pt"))
    assert len(kept) == 1 and kept[0].read_bytes() == b"not a checkpoint"
    assert (run_dir / "result.json").exists()
