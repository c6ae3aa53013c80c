"""Trust: no silently wrong number. Packed runs keep their schedule through resumes and drops, a blow-up never
replaces a good checkpoint, `tables` never averages two setups or counts a run twice, a stale or repeated record
is set apart, a resume on other data or a rerun of a finished run changes nothing, and one bad job or directory never
sinks the others. Tiny in-process runs on generated data (seconds each); the CLI where a user's view is the point."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from mm_repro import records
from mm_repro.errors import Diverged, Preempted, UserError
from mm_repro.models import build
from mm_repro.records.scan import scan
from mm_repro.reports.tables import make_tables
from mm_repro.sweeps.packed import plan_packs
from mm_repro.training import loop as train_module
from mm_repro.training.checks import validate_train
from mm_repro.training.distributed import Shards
from mm_repro.training.randomness import RunRandom, init_model
from mm_repro.training.run import Job
from mm_repro.training.trainers.packed import PackedTrainer
from tests.conftest import TINY, compose_train, run_cli, train_args, write_cifar

SYNTHETIC = ["dataset=synthetic", "dataset.train_size=100", "dataset.test_size=50"]
SMALL = [
    *SYNTHETIC,
    "train.epochs=3",
    "train.milestones=[1]",
    *[t for t in TINY if not t.startswith("train.milestones")],
]


def _job(run_dir: Path, *overrides: str) -> Job:
    """A tiny run on generated data (or on the dataset=... that `overrides` name)."""
    own_data = any(o.startswith("dataset=") for o in overrides)
    node = compose_train(*[a for a in SMALL if not (own_data and a in SYNTHETIC)], *overrides)
    config = OmegaConf.to_container(node, resolve=True)
    return Job(validate_train(node), run_dir, config, hydra_files={"config.yaml": OmegaConf.create(config)})


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / records.METRICS).read_text().splitlines()]


def _weights(run_dir: Path) -> dict:
    return records.load_checkpoint(run_dir / records.CHECKPOINT)["model"]


PACK = [("erm", "seed=0", "method=erm"), ("mm", "seed=1", "method=manifold")]


# 5 steps an epoch: in the milestone's epoch (2), and in the one after (3, with the slow tests)
@pytest.mark.parametrize("stop", [7, pytest.param(12, marks=pytest.mark.slow)])
def test_a_packed_run_resumed_after_a_milestone_keeps_its_schedule(tmp_path, monkeypatch, stop_after, stop):
    unbroken = train_module.train_jobs([_job(tmp_path / "a" / n, *o) for n, *o in PACK])
    assert all(isinstance(o, dict) for o in unbroken)
    stop_after(stop)
    with pytest.raises(Preempted):
        train_module.train_jobs([_job(tmp_path / "b" / n, *o) for n, *o in PACK])
    monkeypatch.undo()
    saved = records.load_checkpoint(tmp_path / "b" / "mm" / records.CHECKPOINT)
    assert (saved["epoch"], saved["position"]["step"]) == (stop // 5, 2)
    train_module.train_jobs([_job(tmp_path / "b" / n, *o) for n, *o in PACK])
    for name, *_ in PACK:
        assert [r["lr"] for r in _rows(tmp_path / "b" / name)] == pytest.approx([0.1, 0.01, 0.01])
        a, b = _weights(tmp_path / "a" / name), _weights(tmp_path / "b" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name  # ends where the unbroken pack ends
        assert [r["test_error"] for r in _rows(tmp_path / "a" / name)] == [
            r["test_error"] for r in _rows(tmp_path / "b" / name)
        ]


def test_the_survivors_of_a_dropped_run_keep_their_schedule_and_their_epoch_times(tmp_path, monkeypatch):
    evaluate = PackedTrainer.evaluate

    def poison_run_1_once(self, loader):  # run 1's weights blow up in epoch 1: its NLL is NaN, it is dropped
        if self.size == 3 and not getattr(self, "poisoned", False):
            self.poisoned = True
            with torch.no_grad():
                next(iter(self.params.values()))[1].fill_(float("nan"))
        return evaluate(self, loader)

    monkeypatch.setattr(PackedTrainer, "evaluate", poison_run_1_once)
    jobs = [_job(tmp_path / f"r{s}", f"seed={s}", "method=manifold") for s in range(3)]
    outcomes = train_module.train_jobs(jobs)
    assert isinstance(outcomes[1], Diverged) and isinstance(outcomes[0], dict) and isinstance(outcomes[2], dict)
    failure = json.loads((tmp_path / "r1" / records.FAILURE).read_text())
    assert failure["status"] == "diverged" and failure["checkpoint_epoch"] is None
    for s in (0, 2):
        rows = _rows(tmp_path / f"r{s}")
        assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.01, 0.01])
    # every run of a pack gets the epoch's real time, not only the first
    first, last = _rows(tmp_path / "r0"), _rows(tmp_path / "r2")
    assert all(a["seconds"] == b["seconds"] > 0.001 for a, b in zip(first, last, strict=True))


def test_a_stop_after_a_blow_up_never_replaces_the_last_good_checkpoint(tmp_path, stop_after):
    # lr x1e8 from epoch 2 on: the weights are NaN within a step or two; the stop comes at epoch 2, step 4
    blow_up = ("train.gamma=1e8", "method=erm")
    for name, seeds in (("alone", [0]), ("packed", [0, 1])):
        jobs = [_job(tmp_path / name / f"s{s}", f"seed={s}", *blow_up) for s in seeds]
        stop_after(9)
        outcomes = train_module.train_jobs(jobs)
        for job, outcome in zip(jobs, outcomes, strict=True):
            assert isinstance(outcome, Diverged), name
            saved = records.load_checkpoint(job.run_dir / records.CHECKPOINT)
            assert saved["epoch"] == 1 and saved["position"] is None  # the good one, of epoch 1
            assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
            failure = json.loads((job.run_dir / records.FAILURE).read_text())
            assert failure["status"] == "diverged" and failure["checkpoint_epoch"] == 1
            assert "after epoch 1) was kept" in failure["message"]
            assert "by epoch 2, step" in failure["message"] and failure["epoch"] == 2  # the epoch it names
            assert not (job.run_dir / records.RESULT).exists()


def test_a_stop_signal_on_another_rank_stops_this_rank_at_the_same_epoch(tmp_path, monkeypatch):
    # this rank got no signal; the collective says one rank did: it must stop too (or it would hang alone)
    calls = []

    def another_rank_stops_after_epoch_1(self, flag: bool) -> bool:
        calls.append(flag)
        return len(calls) == 5  # 5 steps an epoch: reads after steps 1-4, then the epoch's end

    monkeypatch.setattr(Shards, "any_rank", another_rank_stops_after_epoch_1)
    with pytest.raises(Preempted):
        train_module.train_jobs([_job(tmp_path / "r", "method=erm")])
    saved = records.load_checkpoint(tmp_path / "r" / records.CHECKPOINT)
    assert saved["epoch"] == 1 and len(_rows(tmp_path / "r")) == 1


def test_a_resume_on_other_data_is_refused_and_touches_nothing(tmp_path, monkeypatch, stop_after):
    root_a, root_b = write_cifar(tmp_path / "a", "cifar10", seed=0), write_cifar(tmp_path / "b", "cifar10", seed=1)
    run_dir = tmp_path / "run"

    def job(root: Path) -> Job:
        return _job(run_dir, "dataset=cifar10", f"dataset.root={root}", "dataset.download=false", "method=erm")

    stop_after(4)
    with pytest.raises(Preempted):
        train_module.train_jobs([job(root_a)])
    monkeypatch.undo()
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(UserError, match="trained on other data") as refused:
        train_module.train_jobs([job(root_b)])
    assert "train split: 200 images, sha256" in str(refused.value)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before
    result = train_module.train_jobs([job(root_a)])[0]  # the same data elsewhere is fine (dataset.root is free)
    assert result["data"]["train"].startswith("200 images")


def _snapshot(run_dir: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow  # CLI runs: ~10-25 s
def test_a_finished_run_stays_finished_and_a_stale_result_never_counts(cifar10_root, tmp_path):
    run_dir = tmp_path / "run"
    args = train_args(cifar10_root, run_dir, "train.epochs=1", "method=erm")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    result = json.loads((run_dir / records.RESULT).read_text())
    assert result["checkpoint_sha256"] == records.checkpoint_digest(run_dir / records.CHECKPOINT)
    assert len(result["run_id"]) == 32 and result["data"]["test"].startswith("40 images")
    before = _snapshot(run_dir)
    again = run_cli(*args, cwd=tmp_path)  # the same command: nothing to do, nothing stamped again
    assert again.returncode == 0 and "is complete" in again.stdout
    bad_logger = run_cli(*args, "logger=wandb", "logger.mode=bogus", cwd=tmp_path)  # fails before training
    assert bad_logger.returncode == 2 and "logger.mode='bogus'" in bad_logger.stderr
    assert _snapshot(run_dir) == before and not (run_dir / records.FAILURE).exists()
    # the checkpoint deleted to save disk, then another config in the same directory: refused, nothing touched
    (run_dir / records.CHECKPOINT).unlink()
    before = _snapshot(run_dir)
    other = run_cli(*args, "train.lr=0.05", cwd=tmp_path)
    assert other.returncode == 2 and "train.lr: 0.1 -> 0.05" in other.stderr
    assert _snapshot(run_dir) == before
    # with train.resume=false it starts over, and every earlier record moves to previous/
    fresh = run_cli(*args, "train.lr=0.05", "train.resume=false", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    (archived,) = (run_dir / "previous").iterdir()
    assert (archived / records.RESULT).exists() and (archived / records.METRICS).exists()
    # a checkpoint swapped in from another run: its result is stale for tables, and evaluate refuses it
    shutil.copy(archived.parent.parent / records.CHECKPOINT, tmp_path / "keep.pt")
    assert run_cli(*train_args(cifar10_root, tmp_path / "other", "train.epochs=1"), cwd=tmp_path).returncode == 0
    shutil.copy(tmp_path / "other" / records.CHECKPOINT, run_dir / records.CHECKPOINT)
    found = scan([run_dir])
    assert not found.records and len(found.stale) == 1 and "belongs to checkpoint" in found.stale[0]
    refused = run_cli("evaluate", f"run={run_dir}", "suite=[calibration]", "device=cpu", cwd=tmp_path)
    assert refused.returncode == 2 and "belongs to checkpoint" in refused.stderr


def _write_result(
    run_dir: Path, *overrides: str, final: float = 3.0, run_id: str | None = None, test_data: str = "40 images, a"
) -> Path:
    """A result.json as train writes it (records.make_result), for a config, a final error and the test data."""
    job = _job(run_dir, "dataset=cifar10", "train.epochs=1", "train.milestones=[]", *overrides)
    metrics = [{"epoch": 1, "test_error": final, "test_nll": 0.1, "train_images_per_second": 1.0}]
    data = {"train": "200 images, b", "test": test_data}
    identity = {"run_id": run_id or run_dir.name * 4, "checkpoint_sha256": None, "data": data}
    result = records.make_result(job.cfg, job.config, metrics, identity, 1, 1.0, torch.device("cpu"))
    records.write_json(run_dir / records.RESULT, result)
    return run_dir


def _cell(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["arch"] == "PreActResNet18" and r["method"].startswith("Manifold")]


def test_tables_never_average_two_setups_and_count_each_run_once(tmp_path):
    runs = tmp_path / "runs"
    _write_result(runs / "lr1-s0", "seed=0", final=3.0)
    _write_result(runs / "lr1-s1", "seed=1", final=3.4)
    _write_result(runs / "lr05-s0", "seed=0", "train.lr=0.05", final=9.0)  # differs in lr only
    _write_result(runs / "flip-s0", "seed=0", "dataset.flip=false", final=7.0)  # augmentation only
    shutil.copytree(runs / "lr1-s1", runs / "copy-of-lr1-s1")  # the same run, copied
    _write_result(
        runs / "zz-again-s0", "seed=0", final=5.0
    )  # seed 0 of the first setup again (counted: the first path)
    setup = json.loads((runs / "flip-s0" / records.RESULT).read_text())["setup"]
    assert {"dataset.flip", "dataset.crop_padding", "dataset.mean", "train.lr", "train.nesterov"} <= set(setup)
    made = make_tables([runs, runs / ".." / "runs"], tmp_path / "out", ["table1_cifar10"], figures=False)
    markdown, rows = made["tables"]["table1_cifar10"]
    cell = {r["setup"]: r for r in _cell(rows)}
    assert len(cell) == 3, list(cell)
    lr1 = next(r for s, r in cell.items() if "lr=0.1" in s and "flip=True" in s)
    assert lr1["n"] == 2 and lr1["ours test_error (final)"] == "3.20 ± 0.28"  # seeds 0 and 1, once each
    assert next(r for s, r in cell.items() if "lr=0.05" in s)["ours test_error (final)"] == "9.00"
    assert next(r for s, r in cell.items() if "flip=False" in s)["ours test_error (final)"] == "7.00"
    repeated = made["scan"].repeated
    assert len(repeated) == 2 and any("the same run" in line for line in repeated)
    assert any("seed 0 again" in line for line in repeated)
    assert "Repeated runs (a second copy of a run, or a seed repeated in one setup: counted once): 2" in markdown


def test_runs_on_other_data_or_half_done_never_share_a_cell_row(tmp_path):
    runs = tmp_path / "runs"
    _write_result(runs / "a0", "seed=0", final=3.0)
    _write_result(runs / "a1", "seed=1", final=3.4)
    _write_result(runs / "b0", "seed=2", final=8.0, test_data="40 images, other")  # dataset.root held other files
    half = _write_result(runs / "half", "seed=3", final=1.0)
    result = json.loads((half / records.RESULT).read_text())
    result["epochs"], result["setup"]["train.epochs"] = 1, 2000  # one epoch of a 2000-epoch setup
    records.write_json(half / records.RESULT, result)
    made = make_tables([runs], tmp_path / "out", ["table1_cifar10"], figures=False)
    cell = _cell(made["tables"]["table1_cifar10"][1])
    assert sorted((r["n"], r["ours test_error (final)"]) for r in cell) == [(1, "8.00"), (2, "3.20 ± 0.28")]
    assert any("test=40 images, other" in r["setup"] for r in cell)
    assert any("half" in m and "not a whole run" in m for m in made["scan"].malformed)


def test_a_run_at_chance_is_listed_apart_unless_asked(tmp_path):
    runs = tmp_path / "runs"
    _write_result(runs / "s0", "seed=0", final=3.0)
    _write_result(runs / "s1", "seed=1", final=90.0)  # predicts one class of ten
    made = make_tables([runs], tmp_path / "out", ["table1_cifar10"], figures=False)
    (row,) = _cell(made["tables"]["table1_cifar10"][1])
    assert row["n"] == 1 and len(made["scan"].at_chance) == 1 and "at chance level" in made["scan"].at_chance[0]
    made = make_tables([runs], tmp_path / "out", ["table1_cifar10"], figures=False, include_chance=True)
    assert _cell(made["tables"]["table1_cifar10"][1])[0]["n"] == 2


@pytest.mark.slow  # CLI runs: ~10-25 s
def test_tables_list_bad_directories_apart_and_refuse_bad_paths_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    _write_result(runs / "good", "seed=0")
    (runs / "dir-for-file" / records.RESULT).mkdir(parents=True)
    (runs / "latin1").mkdir()
    (runs / "latin1" / records.RESULT).write_bytes('{"run": "é"}'.encode("latin-1"))
    (runs / "bad-failure").mkdir()
    (runs / "bad-failure" / records.FAILURE).write_bytes(b"\xff\xfe")
    found = scan([runs])
    assert [r.path.name for r in found.records] == ["good"]
    assert any("dir-for-file" in m and "cannot be read" in m for m in found.malformed)
    assert any("latin1" in m and "not UTF-8" in m for m in found.malformed)
    assert any("bad-failure" in f for f in found.failed)
    out = tmp_path / "out"
    assert run_cli("tables", f"runs={runs}", f"out={out}", cwd=tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}  # tables, summary, figures, curves/
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (
        ([f"runs={tmp_path / 'nowhere'}", f"out={out}"], "no such directory"),
        ([f"runs={empty}", f"out={out}"], "holds no run directories"),
        ([f"runs={runs}", f"out={runs / 'good' / records.RESULT}"], "is a file"),
    ):
        proc = run_cli("tables", *args, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, args
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


class _Dtypes(TorchDispatchMode):
    """Records the dtype of the first input of every convolution, BatchNorm and ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, torch.dtype]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if any(op in name for op in ("convolution", "batch_norm", "relu")) and isinstance(args[0], torch.Tensor):
            self.seen.add((name.split("_backward")[0], args[0].dtype))
        return func(*args, **(kwargs or {}))


def test_bf16_runs_train_alone_because_vmap_would_not_cast_them(tmp_path):
    from torch.func import functional_call, stack_module_state, vmap

    from mm_repro.models import build

    models = [init_model(lambda: build("preactresnet18", 10, width=4), s) for s in (0, 1)]
    x = torch.randn(2, 4, 3, 32, 32)
    with _Dtypes() as alone, torch.autocast("cpu", dtype=torch.bfloat16):
        models[0](x[0])
    params, buffers = stack_module_state(models)
    with _Dtypes() as packed, torch.autocast("cpu", dtype=torch.bfloat16):
        vmap(lambda p, b, xi: functional_call(models[0], {**p, **b}, (xi,)))(params, buffers, x)
    assert ("convolution", torch.bfloat16) in alone.seen
    assert ("convolution", torch.bfloat16) not in packed.seen  # what a bf16 pack would compute: not the run alone
    with pytest.raises(ValueError, match="bf16 runs are not packed"):
        PackedTrainer(models, [None, None], [RunRandom(s, torch.device("cpu")) for s in (0, 1)], None, 10, "bf16", None)
    jobs = [_job(tmp_path / f"{p}{s}", f"seed={s}", f"train.precision={p}") for p in ("bf16", "fp32") for s in (0, 1)]
    assert sorted(plan_packs(jobs, 8)) == [[0], [1], [2, 3]]


def test_the_draws_of_a_pack_are_the_runs_draws_in_one_copy(monkeypatch):
    from mm_repro.method import mixing
    from mm_repro.method.mixing import MixSpec
    from mm_repro.models import build
    from mm_repro.training.trainers import packed as packing

    specs = [None, MixSpec(1.0, (0,)), MixSpec(2.0, (0, 1, 2)), MixSpec(2.0, (0, 1), "flip")]
    cpu = torch.device("cpu")
    models = [init_model(lambda: build("preactresnet18", 10, width=4), 0)] * 4
    copies = []
    real = packing.host_to_device
    monkeypatch.setattr(packing, "host_to_device", lambda a, d: copies.append(a.shape) or real(a, d))
    trainer = PackedTrainer(models, specs, [RunRandom(s, cpu) for s in range(4)], None, 10, "fp32", lambda p: None)
    k, lam, index = trainer.draws(6)
    assert copies == [(4, 8)]  # one array per step
    for r, spec in enumerate(specs):
        if spec is None:
            assert k[r] == -1 and index[r].tolist() == list(range(6))
            continue
        rng = RunRandom(r, cpu)
        d = mixing.draw(spec, 6, rng.python, rng.numpy)
        assert k[r] == d.k and lam[r].item() == np.float32(d.lam)
        assert index[r].tolist() == (list(range(6))[::-1] if d.index is None else d.index.tolist())


@pytest.mark.slow  # ~6 s: trains a pack
def test_one_bad_job_is_refused_alone_and_the_rest_of_its_pack_trains(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train",
        "-m",
        "hydra/launcher=packed",
        *[a for a in SMALL if not a.startswith("train.epochs")],
        "train.epochs=1",
        "train.milestones=[]",
        "seed=0,1,-1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "error: job 2 (" in proc.stderr and "seed=-1 is out of range" in proc.stderr
    assert "packing jobs #0, #1 into one model" in proc.stdout + proc.stderr
    assert len(list(sweep.rglob(records.RESULT))) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (("seed=4294967296",), "seed=4294967296 is out of range"),
        (("train.momentum=0",), "train.nesterov=true needs train.momentum > 0"),
        (("logger=wandb", "logger.mode=bogus"), "logger.mode='bogus' is not allowed"),
        (("dataset.train_size=0",), "dataset.train_size=0 must be >= 1"),
        (("dataset.std=[0.5,0.0,0.5]",), "dataset.std[1]=0.0 must be a finite number > 0"),
        (("dataset.mean=[0.5,0.5]",), "need one value per channel"),
        (("dataset.crop_padding=-2",), "dataset.crop_padding=-2 must be >= 0"),
    ],
)
def test_values_torch_would_reject_later_are_refused_up_front(extra, message):
    with pytest.raises(UserError, match=re.escape(message)):
        validate_train(compose_train(*SMALL, *extra))


def test_a_checkpoint_is_checked_on_load_and_must_fit_the_model(tmp_path, monkeypatch, stop_after):
    run_dir = tmp_path / "run"
    stop_after(3)
    with pytest.raises(Preempted):
        train_module.train_jobs([_job(run_dir, "method=erm")])
    monkeypatch.undo()
    path = run_dir / records.CHECKPOINT
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[-100] ^= 0xFF  # one flipped bit in the payload, as a bad disk or copy leaves it
    path.write_bytes(bytes(damaged))
    with pytest.raises(UserError, match="does not match its checksum"):
        train_module.train_jobs([_job(run_dir, "method=erm")])
    path.write_bytes(good)
    state = records.load_checkpoint(path)
    state["model"]["conv1.weight"] = state["model"]["conv1.weight"][:, :2]  # a tensor of another shape
    records.save_checkpoint(path, state)
    before = path.read_bytes()
    with pytest.raises(UserError, match="does not fit the model preactresnet18"):
        train_module.train_jobs([_job(run_dir, "method=erm")])
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "name, entry, message",
    [
        ("floats", {"data": np.zeros((4, 3072), np.uint8), "labels": [0.0, 1.5, 2.0, 3.0]}, "not a list of integers"),
        ("layout", {"data": np.zeros((4, 32, 32, 3), np.uint8), "labels": [0, 1, 2, 3]}, "not (N, 3072) rows"),
        ("empty", {"data": np.zeros((0, 3072), np.uint8), "labels": []}, "holds no images"),
    ],
)
def test_cifar_files_of_the_wrong_type_shape_or_size_are_one_line(tmp_path, name, entry, message):
    import pickle

    from mm_repro.data import load_arrays

    root = write_cifar(tmp_path / name, "cifar10", per_file=4)
    batches = [f"data_batch_{i}" for i in range(1, 6)] if name == "empty" else ["data_batch_1"]
    for batch in batches:
        with open(root / "cifar-10-batches-py" / batch, "wb") as f:
            pickle.dump(entry, f)
    cfg = validate_train(compose_train("dataset=cifar10", f"dataset.root={root}", "dataset.download=false"))
    with pytest.raises(UserError, match=re.escape(message)):
        load_arrays(cfg.dataset)


def test_svhn_labels_outside_1_to_10_are_refused_not_folded(tmp_path):
    import scipy.io

    from mm_repro.data import load_arrays
    from tests.conftest import write_svhn

    root = write_svhn(tmp_path / "svhn", n_train=8, n_test=8)
    mat = scipy.io.loadmat(root / "train_32x32.mat")
    mat["y"][0, 0] = 11  # `% 10` would silently make it a 1
    scipy.io.savemat(root / "train_32x32.mat", {"X": mat["X"], "y": mat["y"]})
    cfg = validate_train(compose_train("dataset=svhn", f"dataset.root={root}", "dataset.download=false"))
    with pytest.raises(UserError, match="label 11 found; SVHN stores"):
        load_arrays(cfg.dataset)


@pytest.mark.slow  # CLI runs: ~10-25 s
def test_leftovers_a_kill_leaves_are_removed_and_a_refused_sweep_keeps_its_multirun_yaml(
    tmp_path, monkeypatch, stop_after
):
    run_dir = tmp_path / "run"
    stop_after(3)
    with pytest.raises(Preempted):
        train_module.train_jobs([_job(run_dir, "method=erm")])
    monkeypatch.undo()
    stale = run_dir / "checkpoints" / ".last.pt.abc123.tmp"  # what atomic_write leaves when killed mid-write
    stale.write_bytes(b"half a checkpoint")
    train_module.train_jobs([_job(run_dir, "method=erm")])
    assert not stale.exists() and (run_dir / records.RESULT).exists()
    sweep = tmp_path / "sweep"
    base = ["train", "-m", *SMALL, "train.epochs=1", "train.milestones=[]", f"hydra.sweep.dir={sweep}"]
    assert run_cli(*base, "seed=0,1", cwd=tmp_path).returncode == 0
    before = (sweep / "multirun.yaml").read_bytes()
    refused = run_cli(*base, "seed=0,1", "method.alpha=-1", cwd=tmp_path)
    assert refused.returncode == 2 and (sweep / "multirun.yaml").read_bytes() == before


@pytest.mark.slow
def test_a_divergence_is_one_line_on_the_terminal_and_in_train_log(cifar10_root, tmp_path):
    run_dir = tmp_path / "run"
    extra = ("method=erm", "train.epochs=3", "train.milestones=[1]", "train.gamma=1e8")
    proc = run_cli(*train_args(cifar10_root, run_dir, *extra), cwd=tmp_path)
    assert proc.returncode == 3
    assert (proc.stdout + proc.stderr).count("diverged in epoch 2") == 1
    assert (run_dir / "train.log").read_text().count("diverged in epoch 2") == 1


def test_an_experiment_sweep_without_multirun_is_one_line(tmp_path):
    proc = run_cli("train", "experiment=table6_alpha", "logger=none", cwd=tmp_path)
    assert proc.returncode == 2 and "run it with -m: python -m mm_repro train -m experiment=table6_alpha" in proc.stderr
    assert not (tmp_path / "runs").exists()


def _set_best_epoch(run_dir: Path, best: int) -> None:
    """Rewrite last.pt's records so that epoch `best` holds the lowest test error (the records a resume reads)."""
    state = records.load_checkpoint(run_dir / records.CHECKPOINT)
    for row in state["metrics"]:
        row["test_error"] = 10.0 if row["epoch"] == best else 50.0 + row["epoch"]
    records.save_checkpoint(run_dir / records.CHECKPOINT, state)


@pytest.mark.parametrize("best", [3, 1])
def test_a_best_checkpoint_left_stale_by_a_kill_is_never_reported_as_the_best(tmp_path, best):
    # The background writer writes last.pt, then best.pt: a kill between the two leaves best.pt at an older epoch.
    # Here the disk is put in that state by hand: last.pt after epoch 3, best.pt from epoch 2, no result.json.
    from mm_repro.config import EvalConfig
    from mm_repro.evaluation.evaluate import evaluate_run

    run_dir = tmp_path / "run"
    job = lambda: _job(run_dir, "train.checkpoint_seconds=0")  # noqa: E731
    train_module.train_jobs([job()])
    _set_best_epoch(run_dir, best)
    stale = records.load_checkpoint(run_dir / records.BEST_CHECKPOINT, resumable=False)
    stale["epoch"] = 2
    records.save_checkpoint(run_dir / records.BEST_CHECKPOINT, stale)
    (run_dir / records.RESULT).unlink()
    (result,) = train_module.train_jobs([job()])  # nothing left to train: the records are settled and written
    assert result["best"]["epoch"] == best
    evaluate = EvalConfig(run=str(run_dir), suite=["fgsm"], checkpoint="best", device="cpu", fgsm_eps_pixel=[0.01])
    if best == 3:  # the best epoch is last.pt's own: best.pt is rewritten from it
        held = records.load_checkpoint(run_dir / records.BEST_CHECKPOINT, resumable=False)
        last = records.load_checkpoint(run_dir / records.CHECKPOINT)
        assert held["epoch"] == 3 and all(torch.equal(held["model"][k], last["model"][k]) for k in last["model"])
        assert result["best_checkpoint"] == {
            "epoch": 3,
            "sha256": records.checkpoint_digest(run_dir / records.BEST_CHECKPOINT),
        }
        assert evaluate_run(evaluate)["checkpoint_epoch"] == 3
    else:  # the best epoch's model is gone: said in result.json, and evaluate refuses best.pt
        assert result["best_checkpoint"] is None
        assert not (run_dir / records.BEST_CHECKPOINT).exists()
        with pytest.raises(UserError, match="does not hold the best epoch's model"):
            evaluate_run(evaluate)


def test_best_pt_holds_the_best_epochs_model_and_a_replaced_one_is_refused(tmp_path):
    from mm_repro.config import EvalConfig
    from mm_repro.evaluation.evaluate import evaluate_run

    run_dir = tmp_path / "run"
    (result,) = train_module.train_jobs([_job(run_dir, "train.epochs=4", "train.milestones=[]")])
    best = records.load_checkpoint(run_dir / records.BEST_CHECKPOINT, resumable=False)
    assert (best["epoch"], best["test_error"]) == (result["best"]["epoch"], result["best"]["test_error"])
    assert result["best_checkpoint"]["sha256"] == records.checkpoint_digest(run_dir / records.BEST_CHECKPOINT)
    best["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in best["model"].items()}
    records.save_checkpoint(run_dir / records.BEST_CHECKPOINT, best)  # a valid file, but not the recorded one
    with pytest.raises(UserError, match="replaced since"):
        evaluate_run(EvalConfig(run=str(run_dir), suite=["fgsm"], checkpoint="best", device="cpu"))


def test_an_evaluation_on_other_data_is_refused_and_eval_json_names_its_data(tmp_path):
    from mm_repro.config import EvalConfig
    from mm_repro.evaluation.evaluate import evaluate_run

    own, other = write_cifar(tmp_path / "own", "cifar10"), write_cifar(tmp_path / "other", "cifar10", seed=1)
    run_dir = tmp_path / "run"
    data = ("dataset=cifar10", f"dataset.root={own}", "dataset.download=false", "train.epochs=1", "train.milestones=[]")
    (result,) = train_module.train_jobs([_job(run_dir, *data)])
    ask = lambda **k: EvalConfig(run=str(run_dir), suite=["fgsm", "knn"], device="cpu", knn_k=[1], **k)  # noqa: E731
    with pytest.raises(UserError, match=r"trained and tested on other data .*test split: 40 images, sha256"):
        evaluate_run(ask(dataset_root=str(other)))
    assert not (run_dir / records.EVAL).exists()
    out = evaluate_run(ask())
    assert out["data"] == {"test": result["data"]["test"], "train": result["data"]["train"]}
    shutil.copy(other / "cifar-10-batches-py" / "data_batch_1", own / "cifar-10-batches-py" / "data_batch_1")
    with pytest.raises(UserError, match=r"train split: 200 images"):  # the run's own files replaced since
        evaluate_run(ask())


def test_an_infinite_loss_stops_the_run_as_diverged(tmp_path, monkeypatch):
    from mm_repro.training import builders

    def infinite(logits, targets):  # gradients stay finite (zero): only the loss itself is inf, not NaN
        return (logits * 0).sum() + float("inf")

    monkeypatch.setitem(builders.LOSSES, "bce_softmax", infinite)
    (outcome,) = train_module.train_jobs([_job(tmp_path / "run", "method=erm")])
    assert isinstance(outcome, Diverged) and "train_loss inf" in str(outcome)
    assert json.loads((tmp_path / "run" / records.FAILURE).read_text())["status"] == "diverged"


def test_weight_decay_reaches_the_optimizer_alone_and_packed():
    from mm_repro.training.builders import build_model, packed_trainer, single_trainer
    from mm_repro.training.distributed import World

    cpu = torch.device("cpu")
    cfgs = [validate_train(compose_train(*SMALL, f"seed={s}", "train.weight_decay=0.0123")) for s in (0, 1)]
    models = [build_model(c, cpu, (3, 32, 32)) for c in cfgs]
    alone = single_trainer(cfgs[0], models[0], RunRandom(0, cpu), World())
    assert {g["weight_decay"] for g in alone.optimizer.param_groups} == {0.0123}
    packed = packed_trainer(cfgs, models, [RunRandom(s, cpu) for s in (0, 1)])
    assert {g["weight_decay"] for g in packed.optimizer.param_groups} == {0.0123}


def test_a_resume_compares_every_key_that_changes_numbers_and_only_those():
    from mm_repro.records.checkpoint import config_changes

    old = OmegaConf.to_container(compose_train(*SMALL), resolve=True)
    for key, value, changed in [
        ("train.lr", 0.05, True),
        ("method.alpha", 1.0, True),
        ("dataset.crop_padding", 4, True),
        ("seed", 3, True),
        ("train.eval_batch_size", 7, False),  # RESUME_FREE_KEYS: where or how fast, never what
        ("train.checkpoint_seconds", 1.0, False),
        ("dataset.root", "/elsewhere", False),
    ]:
        new = OmegaConf.to_container(compose_train(*SMALL, f"{key}={value}"), resolve=True)
        found = config_changes(old, new)
        assert [k for k, *_ in found] == ([key] if changed else []), key
    assert config_changes(old, old) == []


def test_torch_load_opens_a_checkpoint_and_mm_repro_still_checks_it(tmp_path):
    run_dir = tmp_path / "run"
    train_module.train_jobs([_job(run_dir, "method=manifold")])
    for name in (records.CHECKPOINT, records.BEST_CHECKPOINT):
        state = torch.load(run_dir / name, weights_only=True)  # what any PyTorch user does
        assert state["format"] == 2 and "conv1.weight" in state["model"]
    model = init_model(lambda: build("preactresnet18", 10, 4), 0)
    model.load_state_dict(torch.load(run_dir / records.BEST_CHECKPOINT, weights_only=True)["model"])
    path = run_dir / records.CHECKPOINT
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped bit inside the zip torch.load would read
    path.write_bytes(bytes(damaged))
    with pytest.raises(UserError, match="does not match its checksum"):
        records.load_checkpoint(path)


def test_a_run_written_by_9e24e2f_still_loads_and_finishes(tmp_path):
    # checkpoints of the earlier format: a text header line with the payload's sha256 (tests/data/run_at_9e24e2f)
    run_dir = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "run_at_9e24e2f", run_dir)
    (run_dir / "README.md").unlink()
    last = records.load_checkpoint(run_dir / records.CHECKPOINT)
    assert last["epoch"] == 2 and "format" not in last
    assert (
        records.checkpoint_digest(run_dir / records.CHECKPOINT)
        == json.loads((run_dir / records.RESULT).read_text())["checkpoint_sha256"]
    )
    (run_dir / records.RESULT).unlink()  # as if killed after its last checkpoint: the rerun writes its result
    node = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    config = OmegaConf.to_container(node, resolve=True)
    (result,) = train_module.train_jobs([Job(validate_train(node), run_dir, config)])
    assert result["epochs"] == 2 and result["final"]["test_error"] == last["metrics"][-1]["test_error"]


def test_chance_is_counted_over_the_classes_a_run_kept():
    from mm_repro.records.chance import at_chance

    def result(error, classes=None):
        dataset = {"name": "mnist", "num_classes": 10, "classes": classes}
        return {
            "run": {"dataset": "mnist", "num_classes": 10},
            "config": {"dataset": dataset},
            "final": {"test_error": error},
        }

    # Figure 5's digits 0-4 net that diverged in its third epoch (measured): one digit of five, 80.89 % error
    assert at_chance(result(80.89, classes=[0, 1, 2, 3, 4]))
    assert not at_chance(result(80.89))  # of ten digits, 80.89 % error is above chance (90 %)
    assert at_chance(result(89.9)) and not at_chance(result(60.0, classes=[0, 1, 2, 3, 4]))


def test_every_directory_tables_finds_is_listed_somewhere(tmp_path):
    # a directory holding only an unreadable metrics.jsonl (not UTF-8) was listed nowhere; one with no epoch yet too
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / records.METRICS).write_bytes(b"\xff\xfe not utf-8\n")
    (tmp_path / "started" / ".hydra").mkdir(parents=True)
    (tmp_path / "started" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    found = scan([tmp_path])
    assert any(str(tmp_path / "bad" / records.METRICS) in line and "cannot be read" in line for line in found.malformed)
    assert [line.split(" (")[0] for line in found.incomplete] == [str((tmp_path / "started").resolve())]


@pytest.mark.parametrize(
    "overrides", [("dataset=mnist", "model=mlp_section3_2", "model.width=16"), ("dataset=tiny_imagenet",)]
)
def test_the_packed_launchers_memory_estimate_uses_the_jobs_own_images(tmp_path, monkeypatch, overrides):
    from mm_repro.sweeps.packed import memory_cap

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (8 * 2**30, 16 * 2**30))
    job = _job(tmp_path / "r", *overrides, "device=cuda", "model.width=4" if len(overrides) == 1 else "seed=0")
    cap = memory_cap(job)  # an MNIST net built on a 3 x 32 x 32 image failed here
    assert 1 <= cap < 10**9


def test_the_api_refuses_what_the_cli_refuses(tmp_path):
    from mm_repro import api

    with pytest.raises(UserError, match="num_classes=0 must be an integer >= 2"):
        api.build_model("preactresnet18", 0)
    with pytest.raises(UserError, match="no such directory"):
        api.tables([tmp_path / "missing"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        api.tables([tmp_path / "file"])


def test_two_checksums_alike_in_their_first_characters_are_shown_whole():
    from mm_repro.evaluation.loading import _digests

    a, b = "2723694cfb21" + "a" * 52, "2723694cfb21" + "b" * 52
    assert _digests(a, b) == (a, b)  # a line that names both cannot show the same 12 characters twice
    assert _digests("1" * 64, "2" * 64) == ("1" * 12, "2" * 12)


def test_a_flattening_study_of_another_config_says_what_to_do_in_its_own_keys(tmp_path, monkeypatch):
    from mm_repro.experiments import flattening

    def refuse(job):
        raise UserError(
            f"{job} holds a run trained with another config (train.epochs: 10 -> 5); ... train.resume=false"
        )

    monkeypatch.setattr(flattening, "completed", refuse)
    with pytest.raises(UserError) as info:
        flattening.reused("job", tmp_path)
    message = str(info.value)
    assert "(train.epochs: 10 -> 5)" in message and "choose another out=" in message
    assert "train.resume" not in message  # not a key of `flattening`


def test_a_runs_wandb_name_says_what_tells_it_apart_and_its_path_is_in_its_config(tmp_path):
    from mm_repro.training.run import tracker_name

    job = _job(tmp_path / "a" / ("x" * 100), "seed=3", "method=manifold")
    job.hydra_files["overrides.yaml"] = ["dataset=synthetic", "method=manifold", "method.alpha=1.0", "seed=3",
                                         f"hydra.run.dir={job.run_dir}", "dataset.root=/far/away"]  # fmt: skip
    name = tracker_name(job)
    assert name == "synthetic preactresnet18 manifold method.alpha=1.0 seed3"
    job.hydra_files["overrides.yaml"] += [f"train.note{i}=a-long-value" for i in range(9)]
    assert len(tracker_name(job)) == 80 and tracker_name(job).endswith("...")


@pytest.mark.slow  # two small sweeps through the CLI
def test_each_sweep_into_one_directory_keeps_its_own_record(tmp_path):
    args = ["train", "-m", *SYNTHETIC, "model.width=4", "train.epochs=1", "train.milestones=[]", "logger=none",
            f"hydra.sweep.dir={tmp_path / 'runs'}"]  # fmt: skip
    for alphas in ("method.alpha=0.5,1.0", "method.alpha=2.0"):
        assert run_cli(*args, alphas, cwd=tmp_path).returncode == 0
    kept = sorted((tmp_path / "runs" / "sweeps").glob("*.yaml"), key=lambda p: p.stat().st_mtime_ns)
    assert len(kept) == 2
    assert "method.alpha=0.5,1.0" in kept[0].read_text() and "method.alpha=2.0" in kept[1].read_text()
