"""End to end through the CLI, as a user runs it: records, resume after a kill (mid-epoch and end-of-epoch paths),
a resume refused after a config change, divergence, one process per run directory, the offline main job, W&B
offline, bad input."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from mm_repro.records import load_checkpoint
from tests.conftest import popen_cli, run_cli, train_args, wait_for

CKPT = "checkpoints/last.pt"
SLOW = pytest.mark.slow  # also checked in process by test_config; here once more through the CLI
TIMING = {"seconds", "train_images_per_second", "wall_seconds"}
IDENTITY = {"run_id", "checkpoint_sha256", "best_checkpoint"}  # two runs are two (their checkpoints hold their ids)


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def _snapshot(run_dir: Path) -> dict:
    """Every file under a run directory with its bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _epochs_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def test_three_epoch_run_on_real_format_files_writes_every_record(cifar10_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*train_args(cifar10_root, run_dir, "train.epochs=3", "train.milestones=[2]"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "epoch" in proc.stdout and "test_err%" in proc.stdout
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "train.log").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.01])
    assert set(rows[0]) == {
        "epoch",
        "lr",
        "train_loss",
        "test_error",
        "test_nll",
        "test_top5_error",  # CIFAR-10 has more than 5 classes
        "seconds",
        "train_images_per_second",
    }
    assert all(0 <= r["test_top5_error"] <= r["test_error"] for r in rows)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["final"]["test_error"] == rows[-1]["test_error"]
    assert result["final"]["test_top5_error"] == rows[-1]["test_top5_error"]
    assert "best_valid" not in result  # no validation split
    assert result["best"]["test_error"] == min(r["test_error"] for r in rows)
    assert result["params"] > 0 and result["epochs"] == 3 and result["device"] == "cpu"
    assert result["torch_version"] == torch.__version__ and "git_commit" in result
    assert result["run"]["method"] == "manifold" and result["run"]["layers"] == [0, 1, 2]
    assert result["run"]["bn_init"] == "uniform" and result["run"]["experiment"] is None
    ckpt = load_checkpoint(run_dir / CKPT)
    assert ckpt["epoch"] == 3 and ckpt["position"] is None
    assert set(ckpt["rng_ranks"][0]) == {"python", "numpy", "torch", "noise", "device_type"}
    assert {"model", "optimizer", "scaler", "metrics", "config", "run_id", "data"} <= set(ckpt)
    assert ckpt["format"] == 2 and "rng" not in ckpt  # torch.load(weights_only=True) opens it; nothing never read
    # an epoch recorded after the last checkpoint (a killed session's) is dropped when the run resumes
    (run_dir / "result.json").unlink()  # killed before its result was written
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({**rows[-1], "epoch": 4}) + "\n")
    again = run_cli(*train_args(cifar10_root, run_dir, "train.epochs=3", "train.milestones=[2]"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("path", ["mid-epoch", "end-of-epoch"])
def test_killed_run_resumes_to_the_same_weights_and_records(cifar10_root, tmp_path, path):
    # batch 2 over 200 images: 100 steps an epoch, so a SIGTERM sent as epoch 2 starts lands mid-epoch; SIGKILL
    # leaves the last end-of-epoch checkpoint (one per epoch: train.checkpoint_seconds=0). Each path is asserted.
    extra = ("train.epochs=3", "train.milestones=[2]", "train.batch_size=2")
    unbroken = tmp_path / "unbroken"
    assert run_cli(*train_args(cifar10_root, unbroken, *extra), cwd=tmp_path).returncode == 0

    broken = tmp_path / "broken"
    proc = popen_cli(train_args(cifar10_root, broken, *extra), tmp_path)
    wait_for(lambda: _epochs_done(broken) >= 1 and (broken / CKPT).exists(), proc, "epoch 1")
    proc.send_signal(signal.SIGTERM if path == "mid-epoch" else signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    saved = load_checkpoint(broken / CKPT)
    if path == "mid-epoch":
        assert proc.returncode == 75, err
        assert "rerun the same command to resume" in err
        assert saved["epoch"] == 1 and 0 < saved["position"]["step"] < 100
    else:
        assert proc.returncode == -signal.SIGKILL
        assert saved["position"] is None and saved["epoch"] >= 1
    assert not (broken / "result.json").exists()
    resumed = run_cli(*train_args(cifar10_root, broken, *extra), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout

    a = load_checkpoint(unbroken / CKPT)
    b = load_checkpoint(broken / CKPT)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (unbroken, broken))
    assert ra["run_id"] != rb["run_id"]
    assert _without_timing({k: v for k, v in ra.items() if k not in IDENTITY}) == _without_timing(
        {k: v for k, v in rb.items() if k not in IDENTITY}
    )
    assert ra["best_checkpoint"]["epoch"] == rb["best_checkpoint"]["epoch"]  # the same best epoch, in each its own file
    rows = [_without_timing(json.loads(line)) for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert rows == [_without_timing(json.loads(line)) for line in (unbroken / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_with_a_changed_config_is_refused_and_touches_nothing(cifar10_root, tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli(*train_args(cifar10_root, run_dir, "train.epochs=1"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = _snapshot(run_dir)
    again = run_cli(
        *train_args(cifar10_root, run_dir, "train.epochs=1", "method.alpha=0.5", "train.lr=0.05"), cwd=tmp_path
    )
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert "method.alpha: 2.0 -> 0.5" in again.stderr and "train.lr: 0.1 -> 0.05" in again.stderr
    assert "train.resume=false" in again.stderr
    assert _snapshot(run_dir) == before
    # keys that only change where or how fast it runs may differ
    same = run_cli(*train_args(cifar10_root, run_dir, "train.epochs=1", "train.eval_batch_size=40"), cwd=tmp_path)
    assert same.returncode == 0, same.stderr


@pytest.mark.parametrize("loss", ["bce_softmax", pytest.param("soft_ce", marks=pytest.mark.slow)])
def test_a_diverged_run_stops_with_a_record_and_keeps_its_last_good_checkpoint(cifar10_root, tmp_path, loss):
    # epoch 1 trains at lr 0.1; from epoch 2 the lr is 0.1 * 1e8, and the run diverges
    run_dir = tmp_path / "run"
    extra = ("method=erm", f"train.loss={loss}", "train.epochs=3", "train.milestones=[1]", "train.gamma=1e8")
    proc = run_cli(*train_args(cifar10_root, run_dir, *extra), cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "diverged in epoch 2" in proc.stderr
    failure = json.loads((run_dir / "failure.json").read_text())
    assert failure["status"] == "diverged" and failure["epoch"] == 2
    assert not (run_dir / "result.json").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["train_loss"] == rows[0]["train_loss"]  # no NaN row
    assert load_checkpoint(run_dir / CKPT)["epoch"] == 1  # the last good one


@pytest.mark.slow
def test_a_second_process_on_the_same_run_directory_is_refused(cifar10_root, tmp_path):
    run_dir = tmp_path / "run"
    args = train_args(cifar10_root, run_dir, "train.epochs=1000", "train.batch_size=2")  # stopped below
    first = popen_cli(args, tmp_path)
    started = lambda: (run_dir / "train.log").exists() and "test_err%" in (run_dir / "train.log").read_text()  # noqa: E731
    wait_for(started, first, "start")
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
    assert f"run directory {run_dir} is in use by another training process (pid {first.pid})" in second.stderr
    busy = run_cli("evaluate", f"run={run_dir}", cwd=tmp_path)
    assert busy.returncode == 2 and f"is still training (pid {first.pid})" in busy.stderr
    assert first.poll() is None  # the first run went on
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 75, err
    assert "in use" not in (run_dir / "train.log").read_text() and not (run_dir / "failure.json").exists()


def test_the_main_job_offline_is_one_line_and_leaves_nothing_behind(tmp_path):
    # A proxy that refuses connections stands in for a machine without internet access.
    env = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    proc = run_cli("train", "dataset=cifar10", "method=manifold", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert f"could not download cifar10 into {tmp_path.resolve() / 'data'}" in proc.stderr
    assert "dataset.root=DIR" in proc.stderr and "MM_DATA_DIR" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no empty data/ and no runs/...


@pytest.mark.slow
def test_smoke_experiment_runs_offline_learns_and_names_its_experiment(tmp_path):
    proc = run_cli("train", "experiment=smoke", f"hydra.run.dir={tmp_path / 'smoke'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "smoke" / "result.json").read_text())
    assert result["run"]["dataset"] == "synthetic" and result["epochs"] == 5
    assert result["run"]["experiment"] == "smoke"
    assert result["final"]["test_error"] < 50  # chance is 90 %


@pytest.mark.slow
def test_wandb_offline_run_writes_its_files_into_the_run_directory(cifar10_root, tmp_path):
    run_dir = tmp_path / "wb"
    args = [a for a in train_args(cifar10_root, run_dir, "train.epochs=1") if a != "logger=none"]
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
        (["train", "model=resnet9"], "model='resnet9' is not an option; choose one of: mlp_appendix_g12"),
        (["train", "method.alpha=0", "dataset=synthetic"], "method.alpha=0.0 must be a finite number > 0"),
        (["train", "dataset=cifar10", "dataset.download=false", "dataset.root=nodata"], "missing cifar-10-batches-py"),
        pytest.param(
            ["train", "train.epochs=abc"],
            "train.epochs='abc' is of the wrong type: train.epochs takes an integer",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["train", "dataset=synthetic", "train.lr=nan"], "train.lr=nan must be a finite number > 0", marks=SLOW
        ),
        pytest.param(["train", "dataset=synthetic", "train.epochs=5"], "milestone 500 is outside 1..4", marks=SLOW),
    ],
)
def test_bad_input_is_one_line_a_non_zero_exit_and_leaves_no_directory(tmp_path, args, message):
    proc = run_cli(*args, "logger=none", cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    if args[0] == "train":
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_unwritable_run_directory_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a regular file, so nothing can be created beneath it, even by root")
    proc = run_cli("train", "experiment=smoke", f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(blocker / "run") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_corrupt_checkpoint_is_a_clear_error_and_is_never_overwritten(cifar10_root, tmp_path):
    run_dir = tmp_path / "run"
    ckpt = run_dir / CKPT
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    proc = run_cli(*train_args(cifar10_root, run_dir, "train.epochs=1"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        f"checkpoint {ckpt} holds no mm_repro checksum, so it is corrupt" in proc.stderr
        and "train.resume=false" in proc.stderr
    )
    assert ckpt.read_bytes() == b"not a checkpoint"
    assert not (run_dir / "failure.json").exists()  # a refused start records nothing in a run's directory

    fresh = run_cli(*train_args(cifar10_root, run_dir, "train.epochs=1", "train.resume=false"), cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    kept = list((run_dir / "previous").glob("*/checkpoints/last.pt"))
    assert len(kept) == 1 and kept[0].read_bytes() == b"not a checkpoint"
    assert (run_dir / "result.json").exists()


def test_one_epoch_then_a_resumed_one_equal_two_unbroken_epochs_bitwise(cifar10_root, tmp_path, stop_after):
    # In-process and deterministic on the CPU: a run stopped mid-epoch 2 (after its epoch-1 checkpoint) and resumed
    # ends with exactly the weights, optimizer state and records of the run that was never stopped.
    from omegaconf import OmegaConf

    from mm_repro.errors import Preempted
    from mm_repro.training import loop as train
    from mm_repro.training.checks import validate_train
    from mm_repro.training.run import Job
    from tests.conftest import TINY, compose_train, data_args

    def job(run_dir: Path) -> Job:
        node = compose_train(*data_args(cifar10_root), *TINY, "train.epochs=2", "method=manifold")
        return Job(validate_train(node), run_dir, OmegaConf.to_container(node, resolve=True))

    train.train_jobs([job(tmp_path / "unbroken")])
    stop_after(13)  # 10 steps an epoch (200 images, batch 20): epoch 2, step 3
    with pytest.raises(Preempted):
        train.train_jobs([job(tmp_path / "broken")])
    assert load_checkpoint(tmp_path / "broken" / CKPT)["position"]["step"] == 3
    train.train_jobs([job(tmp_path / "broken")])  # 7 steps are left: the armed stop (13 steps) never comes
    a, b = load_checkpoint(tmp_path / "unbroken" / CKPT), load_checkpoint(tmp_path / "broken" / CKPT)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    momenta = [
        (s["momentum_buffer"], t["momentum_buffer"])
        for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True)
    ]
    assert all(torch.equal(x, y) for x, y in momenta)
    strip = lambda rows: [_without_timing(r) for r in rows]  # noqa: E731
    assert strip(a["metrics"]) == strip(b["metrics"]) and len(a["metrics"]) == 2


OLD_RUN = Path(__file__).parent / "data" / "run_before_issue_18"  # written by main at bc888af, stopped mid-epoch 2
OLD_RUN_ARGS = ("train.batch_size=2", "train.epochs=2", "method=manifold")


@pytest.mark.slow  # two CLI runs
def test_a_run_directory_written_before_the_house_move_resumes_and_ends_where_an_unbroken_run_ends(
    cifar10_root, tmp_path, monkeypatch
):
    # The checkpoint has no checksum header, no run id or data fingerprints, and an LR scheduler's state: it loads,
    # resumes at its step and ends its epoch 2 on today's schedule; two resumes of it end bitwise alike. (Its first
    # steps ran on the machine and code that wrote it: on a CPU, float sums depend on the thread count, and at batch 2
    # a fresh run's weights differ by ~0.1 between 1 and 2 threads (measured), so no fresh run here can be its
    # unbroken twin; test_killed_run_resumes_to_the_same_weights_and_records asserts that, bitwise, on one machine.)
    copies = [tmp_path / "old", tmp_path / "old_again"]
    for copy in copies:
        shutil.copytree(OLD_RUN, copy)
    # it holds no checksum: refused as damaged unless the user opts in to unchecked files (tensors only)
    refused = run_cli(*train_args(cifar10_root, copies[0], *OLD_RUN_ARGS), cwd=tmp_path)
    assert refused.returncode == 2 and "MM_REPRO_UNCHECKED_CHECKPOINTS=1" in refused.stderr
    monkeypatch.setenv("MM_REPRO_UNCHECKED_CHECKPOINTS", "1")
    before = load_checkpoint(copies[0] / CKPT)
    assert not before.get("run_id") and before["position"]["step"] == 18
    for copy in copies:
        resumed = run_cli(*train_args(cifar10_root, copy, *OLD_RUN_ARGS), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert "resuming" in resumed.stdout and "at step 18 of epoch 2" in resumed.stdout
    a, b = (load_checkpoint(copy / CKPT) for copy in copies)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not all(torch.equal(a["model"][k], before["model"][k]) for k in a["model"])  # it trained on from step 18
    fresh = run_cli(*train_args(cifar10_root, tmp_path / "fresh", *OLD_RUN_ARGS), cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    rows = [json.loads(x) for x in (copies[0] / "metrics.jsonl").read_text().splitlines()]
    unbroken = [json.loads(x) for x in (tmp_path / "fresh" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == json.loads((OLD_RUN / "metrics.jsonl").read_text().splitlines()[0])  # its epoch 1, kept
    assert [r["epoch"] for r in rows] == [1, 2] and [r["lr"] for r in rows] == [r["lr"] for r in unbroken]
    result = json.loads((copies[0] / "result.json").read_text())
    assert result["epochs"] == 2 and result["final"]["test_error"] == rows[1]["test_error"]


@pytest.mark.slow
def test_progress_in_a_log_is_a_line_at_a_steady_interval(tmp_path):
    # stderr is a pipe here, as in a cluster log: no carriage-return redraws, one line per refresh (every 0 s here)
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train", "dataset=synthetic", "model.width=4", "train.epochs=2", "train.milestones=[]", "logger=none",
        f"hydra.run.dir={run_dir}", cwd=tmp_path, env={"MM_REPRO_PROGRESS_SECONDS": "0"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert len(lines) > 4 and "\r" not in proc.stderr
    assert any("img/s" in line and "epoch 1/2" in line for line in lines)
    assert any("run left" in line for line in lines if line.startswith("epoch 2/2"))  # from the second epoch on
    assert "img/s]" not in (run_dir / "train.log").read_text()  # progress goes to the terminal, not the records
