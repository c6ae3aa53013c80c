"""Sweeps on a real SLURM cluster, as users run them: `hydra/launcher=slurm` (Hydra's submitit launcher) against the
one-node cluster `.ci/slurm_up` starts (Debian's slurm-wlm and munge). Skipped, with the reason, where no cluster
answers. A job requeued while it trains (`scontrol requeue`, as a preemption does) resumes from its checkpoint and
ends bitwise where an unbroken run of the same job ends; a job that fails is named at the sweep's end."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from conftest import popen_cli, run_cli, sweep_counts, wait_for

from mm_repro.records import load_checkpoint

pytestmark = pytest.mark.slow


def _cluster() -> str | None:
    """None when a partition answers idle or mixed, else why not."""
    if not shutil.which("sinfo"):
        return "no SLURM here (sinfo not found): run .ci/slurm_up as root to start a one-node cluster"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed ({exc})"
    return None if any(s in states for s in ("idle", "mix", "alloc")) else f"no usable SLURM node ({states.strip()!r})"


REASON = _cluster()
skip = pytest.mark.skipif(REASON is not None, reason=REASON or "")
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
]
PACKED_SLURM = ["hydra/launcher=packed_slurm", *SLURM[1:]]
SMALL = ["experiment=smoke", "dataset.train_size=400", "dataset.test_size=50", "model.width=4", "logger=none"]


@skip
def test_a_sweep_on_slurm_completes_and_names_its_failed_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train", "-m", *SMALL, *SLURM, "method.alpha=0,1", "train.epochs=2", "train.milestones=[]",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    failed = [line for line in proc.stderr.splitlines() if line.startswith("error: job 0")]
    assert len(failed) == 1 and "method.alpha=0.0 must be a finite number > 0" in failed[0]
    (result,) = sweep.rglob("result.json")
    assert json.loads(result.read_text())["epochs"] == 2
    counts = sweep_counts(proc.stdout)
    assert counts["complete runs"] + counts.get("at chance", 0) == 1


def _rows(run_dir) -> list[tuple]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["lr"], r["train_loss"], r["test_error"]) for r in rows]


def _requeue_now(job: str) -> None:
    """`scontrol requeue`, as a preemption does, then the requeued job released from SLURM's 2-minute hold."""
    subprocess.run(["scontrol", "requeue", job], check=True)
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)


def _assert_same_end(run_a, run_b, epochs: int) -> None:
    """Both runs end at `epochs` with bitwise-equal weights and the same metrics.jsonl rows."""
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (run_a, run_b))
    assert a["epoch"] == b["epoch"] == epochs
    for key in a["model"]:
        assert (a["model"][key] == b["model"][key]).all(), key  # bitwise
    assert _rows(run_a) == _rows(run_b)


def _job_ids() -> set[str]:
    return set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split())


@skip
def test_a_requeued_job_resumes_and_ends_bitwise_where_an_unbroken_one_ends(tmp_path):
    args = [
        *SMALL,
        *SLURM,
        "train.epochs=5",
        "train.milestones=[3]",
        "train.checkpoint_seconds=0",
        "deterministic=true",
    ]
    before = _job_ids()
    broken = popen_cli(["train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'broken'}"], cwd=tmp_path)
    unbroken = popen_cli(["train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'unbroken'}"], cwd=tmp_path)

    def epochs_done() -> int:
        return sum(len(p.read_text().splitlines()) for p in (tmp_path / "broken").rglob("metrics.jsonl"))

    wait_for(lambda: epochs_done() >= 2, broken, "two epochs of the job to requeue", timeout=300)
    (folder,) = (tmp_path / "broken").rglob(".submitit")
    job = next(p.name for p in folder.iterdir() if p.name.isdigit())
    assert job in _job_ids() - before
    _requeue_now(job)
    for proc in (broken, unbroken):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    (run_a,) = [p.parent for p in (tmp_path / "broken").rglob("result.json")]
    (run_b,) = [p.parent for p in (tmp_path / "unbroken").rglob("result.json")]
    log = (run_a / "train.log").read_text()
    assert "resuming" in log and "config (resolved)" in log  # it was stopped, and a second session finished it
    _assert_same_end(run_a, run_b, 5)


def _submitted(sweep) -> list[str]:
    folder = next(sweep.rglob(".submitit"), None)
    return sorted({p.name.split("_")[0] for p in folder.iterdir() if p.name[0].isdigit()}) if folder else []


@skip
def test_a_requeued_pack_resumes_and_its_runs_end_bitwise_where_an_unbroken_pack_ends(tmp_path):
    args = [*SMALL, *PACKED_SLURM, "seed=0,1", "train.epochs=5", "train.milestones=[3]",
            "train.checkpoint_seconds=0", "deterministic=true"]  # fmt: skip
    broken = popen_cli(["train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'broken'}"], cwd=tmp_path)
    unbroken = popen_cli(["train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'unbroken'}"], cwd=tmp_path)

    def epochs_done() -> list[int]:
        return [len(p.read_text().splitlines()) for p in (tmp_path / "broken").rglob("metrics.jsonl")]

    wait_for(lambda: len(epochs_done()) == 2 and min(epochs_done()) >= 2, broken, "two epochs of the pack", 300)
    (job,) = _submitted(tmp_path / "broken")  # the two runs are one SLURM job
    _requeue_now(job)
    for proc in (broken, unbroken):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    assert _submitted(tmp_path / "broken") == [job] and len(_submitted(tmp_path / "unbroken")) == 1
    for seed in (0, 1):
        (run_a,) = [p.parent for p in (tmp_path / "broken").rglob("result.json") if f"seed={seed}" in str(p)]
        (run_b,) = [p.parent for p in (tmp_path / "unbroken").rglob("result.json") if f"seed={seed}" in str(p)]
        log = (run_a / "train.log").read_text()
        assert "resuming" in log and "packed" in log
        result = json.loads((run_a / "result.json").read_text())
        assert result["packed"] is True and len(result["packed_with"]) == 1  # the other seed, in both sessions
        _assert_same_end(run_a, run_b, 5)
    again = run_cli("train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'broken'}", cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and (again.stdout + again.stderr).count("is complete") == 2
    assert _submitted(tmp_path / "broken") == [job]  # complete runs say so at once: no cluster job for them


@skip
def test_a_pack_whose_cluster_job_dies_names_each_of_its_runs_and_they_resume_on_rerun(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", *SMALL, *PACKED_SLURM, "seed=0,1", "train.epochs=3", "train.milestones=[]",
            "train.checkpoint_seconds=0", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = popen_cli([*args, "method.alpha=0,1"], cwd=tmp_path)
    done = lambda: [len(p.read_text().splitlines()) for p in sweep.rglob("metrics.jsonl")]  # noqa: E731
    wait_for(lambda: len(done()) == 2 and min(done()) >= 1, proc, "an epoch of the pack", 300)
    (job,) = _submitted(sweep)
    subprocess.run(["scancel", job], check=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    errors = [line for line in err.splitlines() if line.startswith("error: job")]
    assert len(errors) == 4 and "4 jobs failed" in err  # two refused configs, the two runs of the killed pack
    assert sum("method.alpha=0.0 must be a finite number > 0" in line for line in errors) == 2
    killed = [line for line in errors if f"its SLURM job {job} failed" in line]
    assert len(killed) == 2 and all(".submitit" in line for line in killed)  # with the job's log
    assert not list(sweep.rglob("result.json"))
    rerun = run_cli(*args, "method.alpha=1", cwd=tmp_path, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for result in sweep.rglob("result.json"):
        assert json.loads(result.read_text())["epochs"] == 3
        assert "resuming" in (result.parent / "train.log").read_text()
    assert len(list(sweep.rglob("result.json"))) == 2


@skip
def test_the_runs_that_diverge_in_a_pack_on_the_cluster_are_named_at_the_sweeps_end(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train", "-m", *SMALL, *PACKED_SLURM, "seed=0,1", "method=erm", "train.epochs=3", "train.milestones=[1]",
        "train.gamma=1e8", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: job")]
    assert len(errors) == 2 and all("diverged in epoch 2" in line for line in errors), errors
    assert len(_submitted(sweep)) == 1  # both trained in one SLURM job
    failures = [json.loads(p.read_text()) for p in sweep.rglob("failure.json")]
    assert [f["status"] for f in failures] == ["diverged", "diverged"] and not list(sweep.rglob("result.json"))


@skip
def test_a_pack_warned_of_its_time_limit_checkpoints_at_the_step_and_submitits_requeue_resumes_it_bitwise(tmp_path):
    # SIGUSR2 is what SLURM sends `signal_delay_s` before a job's time limit (submitit asks for it); sent here by hand
    # once two epochs are done, since SLURM may send it up to a minute early, which a short test limit can't absorb.
    # checkpoint_seconds=300: no epoch-end checkpoint in between, only the signal's saves the steps.
    args = [*SMALL, *PACKED_SLURM, "dataset.train_size=1000", "seed=0,1", "train.epochs=8", "train.milestones=[5]",
            "deterministic=true"]  # fmt: skip
    broken = popen_cli(["train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'broken'}"], cwd=tmp_path)
    unbroken = popen_cli(["train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'unbroken'}"], cwd=tmp_path)

    def epochs_done() -> list[int]:
        return [len(p.read_text().splitlines()) for p in (tmp_path / "broken").rglob("metrics.jsonl")]

    wait_for(lambda: len(epochs_done()) == 2 and min(epochs_done()) >= 2, broken, "two epochs of the pack", 300)
    (job,) = _submitted(tmp_path / "broken")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    state = lambda: subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout  # noqa: E731
    wait_for(lambda: "PENDING" in state(), broken, "submitit's requeue", timeout=120)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)  # skip SLURM's 2-min hold
    for proc in (broken, unbroken):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    for seed in (0, 1):
        (run_a,) = [p.parent for p in (tmp_path / "broken").rglob("result.json") if f"seed={seed}" in str(p)]
        (run_b,) = [p.parent for p in (tmp_path / "unbroken").rglob("result.json") if f"seed={seed}" in str(p)]
        log = (run_a / "train.log").read_text()
        assert "stopped by signal 12 at epoch" in log and "resuming" in log  # SIGUSR2, mid-epoch
        _assert_same_end(run_a, run_b, 8)


@skip
@pytest.mark.parametrize(
    "option, reason",
    [
        ("hydra.launcher.partition=nope", "sbatch: error: invalid partition specified: nope"),
        ("hydra.launcher.gpus_per_node=1", "sbatch: error: Invalid generic resource (gres) specification"),
    ],
)
def test_a_submission_slurm_refuses_is_one_line_and_leaves_nothing(tmp_path, option, reason):
    args = [*SMALL, *PACKED_SLURM, "seed=0,1", "train.epochs=1", "train.milestones=[]", option]
    proc = run_cli("train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: SLURM refused the sweep's jobs (") and reason in proc.stderr
    assert not (tmp_path / "sweep").exists()  # no .failures/, .submitit/ or multirun.yaml


@skip
def test_a_pack_the_partition_can_never_run_is_cancelled_and_named(tmp_path):
    args = [*SMALL, *PACKED_SLURM, "seed=0,1", "train.epochs=1", "train.milestones=[]"]
    args.append("hydra.launcher.cpus_per_task=64")  # more than the node has: PENDING (PartitionConfig) for ever
    proc = run_cli("train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    named = [line for line in proc.stderr.splitlines() if line.startswith("error: job ")]
    assert len(named) == 2 and all("never ran (it stayed PENDING (PartitionConfig)" in line for line in named)
    assert not _job_ids()  # cancelled, not left waiting in the queue


@skip
def test_a_stopped_launching_process_says_its_jobs_run_on_and_leaves_no_notes(tmp_path):
    args = [*SMALL, *PACKED_SLURM, "seed=0,1", "train.epochs=200", "train.milestones=[]"]
    sweep = tmp_path / "sweep"
    proc = popen_cli(["train", "-m", *args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    wait_for(lambda: _job_ids(), proc, "the pack's SLURM job", timeout=120)
    (job,) = _job_ids()
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    try:
        assert proc.returncode == 130 and err.rstrip().endswith("interrupted")
        assert f"SLURM job(s) {job} keep running (scancel {job} stops them)" in out + err
        assert not (sweep / ".failures").exists()
    finally:
        subprocess.run(["scancel", job], check=False)


@skip
def test_a_flattening_study_on_slurm_trains_each_net_as_a_job_and_each_is_the_local_net(tmp_path):
    # the nets of a small study as SLURM jobs of one CPU each, then measured and reported on the submitting node; each
    # net bitwise the net the local launcher trains at one thread a job
    from conftest import write_mnist

    root = write_mnist(tmp_path / "data", n_train=200, n_test=60)
    study = ["flattening", "study=section3_2", f"dataset_root={root}", "download=false", "epochs=2", "width=16",
             "lr=0.003", "svd_per_class=6"]  # fmt: skip
    on_slurm = run_cli(*study, f"out={tmp_path / 'slurm'}", "launcher=slurm",
                       "launcher_options={partition:debug,mem_gb:2}", cwd=tmp_path, timeout=900)  # fmt: skip
    assert on_slurm.returncode == 0, on_slurm.stderr[-2000:]
    report = json.loads((tmp_path / "slurm" / "flattening_section3_2.json").read_text())
    assert report["provenance"]["nets"].startswith("5 trained as SLURM jobs")
    assert list((tmp_path / "slurm" / "runs" / ".submitit").iterdir())  # submitit's job folders: SLURM ran them
    local = run_cli(*study, f"out={tmp_path / 'local'}", "workers=2", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert local.returncode == 0, local.stderr[-2000:]
    for net in (tmp_path / "slurm" / "runs").glob("mlp_*/seed0"):
        a = load_checkpoint(net / "checkpoints" / "last.pt")["model"]
        b = load_checkpoint(tmp_path / "local" / "runs" / net.parent.name / "seed0" / "checkpoints" / "last.pt")[
            "model"
        ]
        assert all((a[k] == b[k]).all() for k in a), net.parent.name
