"""Scale and reliability: DDP on CPU (gloo, two processes), a 20-job local multirun, the launchers' configs, and
writes that leave the previous file usable when they crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mm_repro import records
from mm_repro.errors import UserError
from mm_repro.training.devices import claim_gpu
from mm_repro.training.signals import StopSignals
from tests.conftest import TINY, data_args, run_cli


def test_atomic_write_that_crashes_leaves_the_previous_file_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    first = records.save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 1})

    def crash(src, dst):
        raise OSError("disk vanished mid-rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        records.save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "epoch": 2})
    monkeypatch.undo()
    assert records.checkpoint_digest(path) == first
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_stop_signals_set_the_flag_and_a_second_signal_acts_normally(sig):
    previous = signal.getsignal(sig)
    with StopSignals() as stop:
        os.kill(os.getpid(), sig)
        assert stop.received == sig
        assert signal.getsignal(sig) is previous  # restored: a second signal is not swallowed
    assert signal.getsignal(sig) is previous


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "last.pt"
    records.save_checkpoint(path, {"model": {"w": torch.ones(1000)}, "epoch": 3})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="holds no mm_repro checksum, so it is corrupt \\(cut") as info:
        records.load_checkpoint(path)
    assert "\n" not in str(info.value)


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mm_repro", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes_rank_zero_writes_once(cifar10_root, tmp_path):
    run_dir = tmp_path / "ddp"
    args = [
        "train",
        *data_args(cifar10_root),
        *TINY,
        "train.epochs=2",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
    ]
    proc = _torchrun(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert log.count("test_err%") == 1 and "x 2 process(es)" in log
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    ckpt = records.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert len(ckpt["rng_ranks"]) == 2
    assert ckpt["rng_ranks"][0]["numpy"][1].tolist() != ckpt["rng_ranks"][1]["numpy"][1].tolist()  # per-rank seeds
    assert json.loads((run_dir / "result.json").read_text())["epochs"] == 2
    # A finished run stays finished; an unfinished 2-process checkpoint resumed in one process is refused, and kept.
    assert "is complete" in run_cli(*args, cwd=tmp_path).stdout
    (run_dir / "result.json").unlink()  # as if killed after its last checkpoint, before its result
    more = run_cli(*args, cwd=tmp_path)
    assert more.returncode == 2 and "was written by 2 process(es)" in more.stderr
    assert records.load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 2


@pytest.mark.slow
def test_a_one_epoch_ddp_run_ends_on_every_rank(cifar10_root, tmp_path):
    # rank 1 used to read last.pt's checksum for its result before rank 0 had written it (epoch 1: no older file)
    run_dir = tmp_path / "ddp"
    args = ["train", *data_args(cifar10_root), *TINY, "train.epochs=1", "device=cpu", f"hydra.run.dir={run_dir}"]
    proc = _torchrun(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["checkpoint_sha256"] == records.checkpoint_digest(run_dir / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_twenty_job_local_multirun_completes_without_interference(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train",
        "-m",
        "experiment=smoke",
        "hydra/launcher=local",
        "hydra.launcher.n_jobs=2",
        "seed=range(0,20)",
        "train.epochs=1",
        "train.milestones=[]",
        "dataset.train_size=200",
        "dataset.test_size=100",
        "model.width=4",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(sweep.rglob("result.json"))
    assert len(results) == 20
    seeds = []
    for path in results:
        result = json.loads(path.read_text())
        assert f"seed={result['run']['seed']}" in path.parent.name  # each run wrote into its own directory
        assert len((path.parent / "metrics.jsonl").read_text().splitlines()) == 1
        seeds.append(result["run"]["seed"])
    assert sorted(seeds) == list(range(20))


@pytest.mark.slow
def test_slurm_launcher_composes(tmp_path):
    proc = run_cli("train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "SlurmLauncher" in proc.stdout and "partition: gpu" in proc.stdout
    assert "max_num_timeout: 50" in proc.stdout and "gpus_per_node: 1" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["dataset=imagenet"],
            "dataset='imagenet' is not an option; choose one of: cifar10, cifar100, mnist, svhn, synthetic, "
            "tiny_imagenet",
            marks=pytest.mark.slow,
        ),
        (["method=cutmax"], "method='cutmax' is not an option; choose one of: cutmix, cutout, erm, manifold, mixup"),
        pytest.param(
            ["method=erm", "method.block_gradient=true"],
            "method.block_gradient=true needs a method that mixes hidden states (method=erm",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["model.stem_stride=0"],
            "model.stem_stride=0: the first convolution's stride must be >= 1",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["dataset=synthetic", "model.width=4", "dataset.valid_per_class=200"],
            "dataset.valid_per_class=200: class 0 has only 200 training images, so none would be left to train on; "
            "choose at most 199",
            marks=pytest.mark.slow,
        ),
        pytest.param(["dataset=synthetic", "method.layers=[7]"], "has no mixing point 7", marks=pytest.mark.slow),
        pytest.param(
            ["dataset=synthetic", "train.batch_size=1"],
            "train.batch_size=1: mixing needs at least 2",
            marks=pytest.mark.slow,
        ),
        (
            ["dataset=synthetic", "model.width=4", "train.channels_last=true", "device=cpu"],
            "model.width=4 with train.channels_last or train.compile on the CPU: a strided 1x1 convolution with 4",
        ),
    ],
)
def test_more_bad_input_is_one_line(tmp_path, args, message):
    proc = run_cli("train", *args, "logger=none", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["device=tpu"], "device='tpu' is not allowed; choose one of cpu, cuda"),
        (["compile_mode=fastest"], "compile_mode='fastest' is not allowed; choose one of default, reduce-overhead"),
    ],
)
def test_bad_bench_options_are_one_line(tmp_path, args, message):
    proc = run_cli("bench", *args, f"out={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow  # ~12 s a launcher: a sweep with a failing job
@pytest.mark.parametrize("launcher", ["basic", "local", "submitit_local"])
def test_a_failed_sweep_job_is_recorded_named_and_listed_under_every_launcher(tmp_path, launcher):
    # submitit_local runs each job as SLURM does (a pickled job in its own process), without a cluster.
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train",
        "-m",
        "experiment=smoke",
        f"hydra/launcher={launcher}",
        "method.alpha=0,1",
        "train.epochs=1",
        "train.milestones=[]",
        "dataset.train_size=100",
        "dataset.test_size=50",
        "model.width=4",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert (
        len(failed) == 1
        and "method.alpha=0" in failed[0]
        and "method.alpha=0.0 must be a finite number > 0" in failed[0]
    )
    bad = next(p for p in sweep.rglob("failure.json"))
    assert "method.alpha=0," in str(bad.parent) or str(bad.parent).endswith("method.alpha=0")
    record = json.loads(bad.read_text())
    assert record["status"] == "failed" and "must be a finite number > 0" in record["message"]
    assert "error: method.alpha=0.0" in (bad.parent / "train.log").read_text()
    assert len(list(sweep.rglob("result.json"))) == 1  # the other job ran
    assert not (sweep / ".failures").exists()
    if launcher == "local":  # jobs print side by side: each console line names its job, train.log stays plain
        ok = next(sweep.rglob("result.json")).parent
        assert any(line.startswith("[job 1] final test error") for line in proc.stdout.splitlines())
        assert not any(line.startswith("[job") for line in (ok / "train.log").read_text().splitlines())
    tables = run_cli(
        "tables",
        f"runs={sweep}",
        f"out={tmp_path / 'tables'}",
        "tables=[table1_cifar10]",
        "include_chance=true",
        cwd=tmp_path,
    )
    assert tables.returncode == 0, tables.stderr
    assert "1 complete runs, 0 incomplete, 1 failed" in tables.stdout
    assert "Failed runs (not results): 1" in tables.stdout


def test_claimed_gpus_are_never_shared_and_are_released(tmp_path):
    keys = ["gpu-a", "gpu-b"]
    with claim_gpu(2, keys, tmp_path) as first, claim_gpu(2, keys, tmp_path) as second:
        assert {first, second} == {0, 1}
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import os, sys, pathlib, threading\n"
                "from mm_repro.training.devices import claim_gpu\n"
                "give_up = lambda: (print('waited'), sys.stdout.flush(), os._exit(0))\n"
                "threading.Timer(1.0, give_up).start()\n"
                f"with claim_gpu(2, {keys!r}, pathlib.Path({str(tmp_path)!r}), poll_seconds=0.1) as i: print(i)\n",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.stdout.strip() == "waited"  # a third job waits while both GPUs are held
    with claim_gpu(2, keys, tmp_path) as again:
        assert again == 0  # released on exit


def test_a_checkpoint_of_an_earlier_version_is_one_line(tmp_path, monkeypatch):
    # earlier versions kept global random streams, one per visible GPU (an IndexError with fewer GPUs); they wrote no
    # checksum either, so they load only behind the opt-in for unchecked files
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "epoch": 3, "rng": {}, "rng_ranks": [{"python": None, "cuda": [1, 2]}]}, path)
    with pytest.raises(UserError, match="holds no mm_repro checksum"):
        records.load_checkpoint(path)
    monkeypatch.setenv("MM_REPRO_UNCHECKED_CHECKPOINTS", "1")
    with pytest.raises(UserError, match="written by an earlier mm_repro .* pass train.resume=false") as info:
        records.load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_an_offline_wandb_run_turns_off_wandbs_error_reports(tmp_path, monkeypatch):
    # W&B's error reporting (Sentry) makes network requests even in offline mode; an offline run turns it off.
    import wandb.env

    from mm_repro.config import LoggerConfig
    from mm_repro.records.tracking import open_tracker

    monkeypatch.delenv("WANDB_ERROR_REPORTING", raising=False)
    assert wandb.env.error_reporting_enabled()  # W&B's default
    tracker = open_tracker(LoggerConfig(name="wandb", mode="offline"), tmp_path, {"seed": 0}, "t")
    try:
        assert not wandb.env.error_reporting_enabled()
        assert tracker.run.settings.mode == "offline"
    finally:
        tracker.finish()


def test_local_and_slurm_jobs_take_their_share_of_the_cores_unless_omp_num_threads_says(monkeypatch):
    import os

    import torch
    from omegaconf import OmegaConf

    from mm_repro.sweeps.jobs import share_threads

    before = torch.get_num_threads()
    joblib = OmegaConf.create(
        {"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.JoblibLauncher", "n_jobs": 4}}
    )
    basic = OmegaConf.create({"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}})
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert share_threads(joblib) == max(1, (os.cpu_count() or 1) // 4) == torch.get_num_threads()
        assert share_threads(basic) is None
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
        assert share_threads(basic) == 3 == torch.get_num_threads()  # a SLURM job: the cores SLURM gave it
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert share_threads(joblib) is None  # the user's setting wins
    finally:
        torch.set_num_threads(before)


def test_bench_warns_when_mfu_reads_above_100_percent():
    from mm_repro.commands.bench import implausible

    assert implausible({"mfu_ours": 0.4, "mfu_official": 0.1, "measured_peak_flops": 1e11}) == []
    (line,) = implausible({"mfu_ours": 1.3, "mfu_official": 0.2, "measured_peak_flops": 1e11})
    assert "MFU above 100 % (ours 130 %)" in line and "quiet machine" in line


def test_sigusr2_stops_like_sigterm_and_then_runs_the_handler_it_displaced_submitits_requeue():
    import os
    import signal

    from mm_repro.errors import Preempted
    from mm_repro.training.signals import StopSignals

    calls = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))  # as submitit installs it
    try:
        with pytest.raises(Preempted), StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.received == signal.SIGUSR2 and calls == []  # caught: the loop writes its checkpoints first
            raise Preempted("stopped")
        assert calls == [signal.SIGUSR2]  # then submitit's handler runs: it requeues the job and exits
        with StopSignals() as stop:  # a run that ended anyway (the signal came in its last step) is not requeued
            os.kill(os.getpid(), signal.SIGUSR2)
        with pytest.raises(Preempted), StopSignals():  # SIGTERM stops without handing on
            os.kill(os.getpid(), signal.SIGTERM)
            raise Preempted("stopped")
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, before)


@pytest.mark.slow
def test_ddp_trains_a_gradient_blocked_run(cifar10_root, tmp_path):
    # the layers before k get no gradient, and each rank draws its own k: DDP must look for unused parameters
    run_dir = tmp_path / "blocked"
    args = ["train", *data_args(cifar10_root), *TINY, "train.epochs=2", "device=cpu", f"hydra.run.dir={run_dir}"]
    proc = _torchrun(*args, "method=manifold", "method.block_gradient=true", "method.layers=[1,2]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["epochs"] == 2 and result["setup"]["method.block_gradient"] is True
