"""Packed sweeps: runs trained as one fused model, each exactly as if alone. One packed step against three single
steps (loss, every gradient, every parameter after), packed sweeps against the same sweep alone, a stop signal and
the resumes (packed and alone), grouping, and the packed Table 1a sweep rendered by `tables`."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from mm_repro.data import DeviceLoader, load_arrays
from mm_repro.method.losses import bce_softmax
from mm_repro.method.mixing import MixSpec
from mm_repro.models import build
from mm_repro.records import load_checkpoint
from mm_repro.records.checkpoint import to_host
from mm_repro.sweeps.packed import plan_packs
from mm_repro.training.checks import validate_train
from mm_repro.training.optim import build_optimizer
from mm_repro.training.randomness import RunRandom, init_model
from mm_repro.training.run import Job
from mm_repro.training.step import MixedForward, TrainStep
from mm_repro.training.trainers.packed import PackedTrainer
from mm_repro.training.trainers.single import SingleTrainer
from tests.conftest import TINY, compose_train, data_args, popen_cli, run_cli, sweep_args, wait_for

CPU = torch.device("cpu")
ERM, MIXUP, MANIFOLD = None, MixSpec(1.0, (0,)), MixSpec(2.0, (0, 1, 2))


def _model(seed: int) -> torch.nn.Module:
    return init_model(lambda: build("preactresnet18", 10, width=8), seed)


def _sgd(params):
    return build_optimizer(params, 0.1, 0.9, 1e-4, True, fused=False)


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Equal to float32 rounding: within 2e-5 of the tensor's scale (grouped and plain convolutions sum in another
    order; a gradient that cancels to almost nothing keeps the rounding of its larger terms, docs/performance.md §5)."""
    scale = max(a.abs().max().item(), 1e-3)
    assert (a - b).abs().max().item() <= 2e-5 * scale, what


def test_one_packed_step_equals_three_single_steps():
    # the manifold run's seed is one whose first k is 2, so the three runs mix at three different points (or none)
    seeds = [0, 1, next(s for s in range(2, 50) if RunRandom(s, CPU).python.randint(0, 2) == 2)]
    specs = [ERM, MIXUP, MANIFOLD]
    g = torch.Generator().manual_seed(9)
    xs = [torch.randn(12, 3, 32, 32, generator=g) for _ in seeds]
    ys = [torch.randint(0, 10, (12,), generator=g) for _ in seeds]
    singles = []
    for seed, spec, x, y in zip(seeds, specs, xs, ys, strict=True):
        model = _model(seed)
        step = TrainStep(
            MixedForward(model), _sgd(model.parameters()), bce_softmax, 10, spec, "fp32", RunRandom(seed, CPU)
        )
        loss = step.step(x, y)
        momentum = [step.optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
        singles.append((loss, {n: p.grad.clone() for n, p in model.named_parameters()}, model.state_dict(), momentum))
    packed = PackedTrainer(
        [_model(s) for s in seeds], specs, [RunRandom(s, CPU) for s in seeds], bce_softmax, 10, "fp32", _sgd
    )
    losses = packed.train_step(xs, ys)
    for r, (loss, grads, state, _) in enumerate(singles):
        _close(losses[r], loss, f"run {r} loss")
        for name, grad in grads.items():
            _close(packed.params[name].grad[r], grad, f"run {r} gradient of {name}")
        for name, value in packed.state(r)["model"].items():
            if value.is_floating_point():
                _close(value, state[name], f"run {r} {name} after the step")
            else:
                assert torch.equal(value, state[name]), name
    # each run's optimizer state is its own, in the format of a run alone: the momentum buffers the run alone holds
    for r, (*_, momentum) in enumerate(singles):
        saved = packed.state(r)["optimizer"]["state"]
        assert len(saved) == len(momentum)
        for i, buf in enumerate(momentum):
            _close(saved[i]["momentum_buffer"], buf, f"run {r} momentum of parameter {i}")


def _bce_softmax_float64(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The official loss kept in float64 (mm_repro runs it in float32 by design), so that nothing rounds."""
    return torch.nn.functional.binary_cross_entropy(torch.softmax(logits, 1), targets.to(logits.dtype))


@pytest.mark.slow
def test_twenty_packed_steps_in_float64_are_the_runs_alone_to_rounding(cifar10_root):
    # Two epochs of real-format batches (each run's own order, crops and flips), BN statistics and momentum: in
    # float64 the pack is the runs alone to ~1e-15. (In float32 the weights drift apart by up to 4e-3 after 20 steps
    # on these tiny nets, for packed and unpacked orders of summation alike: `_compare`; README "Packed sweeps".)
    cfg = validate_train(compose_train("dataset=cifar10", f"dataset.root={cifar10_root}", "dataset.download=false"))
    train, _ = load_arrays(cfg.dataset)
    loader = DeviceLoader(train, cfg.dataset, 20, CPU, True)
    specs, seeds = [ERM, MIXUP, MANIFOLD], [3, 4, 5]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    batches = []
    for _ in range(2):
        orders = [loader.order(g) for g in gens]
        batches += [[loader.batch(o, i, g) for o, g in zip(orders, gens, strict=True)] for i in range(10)]
    double = lambda seed: _model(seed).double()  # noqa: E731
    loss = _bce_softmax_float64
    packed = PackedTrainer(
        [double(s) for s in seeds], specs, [RunRandom(s, CPU) for s in seeds], loss, 10, "fp32", _sgd
    )
    singles = []
    for seed, spec in zip(seeds, specs, strict=True):
        model = double(seed)
        opt = _sgd(model.parameters())
        singles.append((model, TrainStep(MixedForward(model), opt, loss, 10, spec, "fp32", RunRandom(seed, CPU))))
    for batch in batches:
        packed.train_step([x.double() for x, _ in batch], [y for _, y in batch])
        for (_, step), (x, y) in zip(singles, batch, strict=True):
            step.step(x.double(), y)
    for r, (model, _) in enumerate(singles):
        state = model.state_dict()
        for name, value in packed.state(r)["model"].items():
            assert (value.double() - state[name].double()).abs().max() <= 1e-12, (r, name)


def _sweep(
    tmp_path: Path, root: Path, name: str, *extra: str, launcher: str = "basic", width: int = 8
) -> subprocess.CompletedProcess:
    return run_cli(
        "train",
        "-m",
        *data_args(root),
        *TINY,
        f"model.width={width}",  # at width 4 some BN gradients cancel so far that float32 summation order shows
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={tmp_path / name}",
        *extra,
        cwd=tmp_path,
        timeout=900,
    )


def _runs(sweep: Path) -> dict[str, Path]:
    return {p.parent.parent.name + "/" + p.parent.name: p.parent for p in sweep.rglob(".hydra")}


def _compare(a: Path, b: Path, test_images: int) -> None:
    """The stated tolerance for two short float32 epochs (20 steps; float64 is exact, see above): weights within
    2e-2 (they are of order 0.1), test error within two test images, test NLL within 2 %. Measured: at most 3.8e-3,
    equal errors, 0.3 %."""
    ma = load_checkpoint(a / "checkpoints" / "last.pt")["model"]
    mb = load_checkpoint(b / "checkpoints" / "last.pt")["model"]
    for key in ma:
        if ma[key].is_floating_point() and "running" not in key:
            assert (ma[key].double() - mb[key].double()).abs().max() <= 2e-2, key
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert abs(ra["final"]["test_error"] - rb["final"]["test_error"]) <= 2 * 100 / test_images + 1e-9
    assert ra["final"]["test_nll"] == pytest.approx(rb["final"]["test_nll"], rel=2e-2)


METHODS = ("method=erm,mixup,manifold", "seed=3")


@pytest.mark.slow
def test_a_packed_sweep_ends_where_its_runs_alone_end_with_complete_records(cifar10_root, tmp_path):
    extra = (*METHODS, "train.epochs=2")
    assert _sweep(tmp_path, cifar10_root, "alone", *extra).returncode == 0
    packed = _sweep(tmp_path, cifar10_root, "packed", *extra, launcher="packed")
    assert packed.returncode == 0, packed.stderr[-3000:]
    assert "packing jobs #0, #1, #2 into one model" in packed.stdout + packed.stderr
    alone, together = _runs(tmp_path / "alone"), _runs(tmp_path / "packed")
    assert set(alone) == set(together) and len(alone) == 3
    for name, run_dir in together.items():
        for record in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.jsonl", "result.json", "train.log"):
            assert (run_dir / record).exists(), record
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
        assert "packed with 2 other run(s)" in (run_dir / "train.log").read_text()
        result = json.loads((run_dir / "result.json").read_text())
        assert result["packed"] and sorted(result["packed_with"]) == sorted(
            str(d) for n, d in together.items() if n != name
        )  # which runs it was packed with
        assert not json.loads((alone[name] / "result.json").read_text())["packed"]
        single = build("preactresnet18", 10, width=8)  # the checkpoint holds this run's own, unpacked model
        single.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"])
        _compare(run_dir, alone[name], test_images=40)


@pytest.mark.slow
def test_a_stopped_pack_checkpoints_every_run_and_resumes_packed_or_alone(cifar10_root, tmp_path):
    extra = (*METHODS, "train.epochs=2", "train.batch_size=2")
    assert _sweep(tmp_path, cifar10_root, "unbroken", *extra, launcher="packed").returncode == 0
    args = sweep_args(cifar10_root, tmp_path / "stopped", "model.width=8", "hydra/launcher=packed", *extra)
    proc = popen_cli(args, tmp_path)
    logs = lambda: list((tmp_path / "stopped").rglob("train.log"))  # noqa: E731
    wait_for(lambda: len(logs()) == 3 and all("test_err%" in p.read_text() for p in logs()), proc, "three packed runs")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    runs = _runs(tmp_path / "stopped")
    positions = [load_checkpoint(d / "checkpoints" / "last.pt")["position"] for d in runs.values()]
    assert all(p is not None for p in positions) and len({p["step"] for p in positions}) == 1  # mid-epoch, together
    # a copy of one run resumes alone, with its own command; the three resume packed
    lone = tmp_path / "lone"
    shutil.copytree(next(d for n, d in runs.items() if "method=mixup" in n), lone)
    overrides = [line[2:] for line in (lone / ".hydra" / "overrides.yaml").read_text().splitlines()]
    alone = run_cli("train", *overrides, f"hydra.run.dir={lone}", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert "resuming" in alone.stdout and "packed with" not in alone.stdout
    assert len((lone / "metrics.jsonl").read_text().splitlines()) == 2 and (lone / "result.json").exists()
    rest = _sweep(tmp_path, cifar10_root, "stopped", *extra, launcher="packed")
    assert rest.returncode == 0, rest.stderr[-2000:]
    unbroken = _runs(tmp_path / "unbroken")
    for name, run_dir in runs.items():  # resumed packed: bitwise the unbroken packed run (a deterministic CPU run)
        assert "resuming" in (run_dir / "train.log").read_text()
        a = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
        b = load_checkpoint(unbroken[name] / "checkpoints" / "last.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_a_packed_runs_state_continues_alone_and_back_exactly():
    # float64, so that equality is exact up to rounding: the checkpoint a pack writes for run r, loaded by a run
    # alone, continues as the pack does; and a lone run's checkpoint loads into a pack's slot.
    loss, seeds, specs = _bce_softmax_float64, [0, 1, 2], [ERM, MIXUP, MANIFOLD]
    g = torch.Generator().manual_seed(0)

    def batches() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [torch.randn(12, 3, 32, 32, generator=g).double() for _ in seeds], [
            torch.randint(0, 10, (12,), generator=g) for _ in seeds
        ]

    def pack() -> PackedTrainer:
        models = [_model(s).double() for s in seeds]
        return PackedTrainer(models, specs, [RunRandom(s, CPU) for s in seeds], loss, 10, "fp32", _sgd)

    packed = pack()
    for _ in range(3):
        packed.train_step(*batches())
    model = _model(99).double()  # other initial weights: all of them must come from the checkpoint
    optimizer = _sgd(model.parameters())
    rng = RunRandom(1, CPU)
    rng.load_state(to_host(packed.rngs[1].state()), "checkpoint")
    step = TrainStep(MixedForward(model), optimizer, loss, 10, MIXUP, "fp32", rng)
    single = SingleTrainer(model, optimizer, step, None)
    single.load(0, to_host(packed.state(1)))
    for _ in range(4):
        xs, ys = batches()
        assert packed.train_step(xs, ys)[1].item() == pytest.approx(
            single.train_step([xs[1]], [ys[1]]).item(), abs=1e-12
        )
    state = model.state_dict()
    assert all(
        (packed.state(1)["model"][k] - v).abs().max() <= 1e-12 for k, v in state.items() if v.is_floating_point()
    )
    again = pack()
    again.load(1, to_host(single.state(0)))
    for k, v in state.items():
        assert torch.equal(again.state(1)["model"][k], v), k
    momentum = again.state(1)["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, optimizer.state[model.conv1.weight]["momentum_buffer"])


def _job(tmp_path: Path, *overrides: str) -> Job:
    cfg = validate_train(compose_train("dataset=synthetic", "model.width=4", *overrides))
    return Job(cfg, tmp_path / "-".join(overrides), {})


def test_jobs_pack_by_what_they_share_and_the_rest_run_alone(tmp_path):
    jobs = [
        _job(tmp_path, "method=erm", "seed=0"),
        _job(tmp_path, "method=mixup", "seed=1"),
        _job(tmp_path, "method=manifold", "method.alpha=0.5", "method.pairing=flip", "seed=2"),
        _job(tmp_path, "model=wrn28_2", "seed=0"),  # another model: alone
        _job(tmp_path, "method=erm", "seed=5", "train.lr=0.05"),  # another optimizer setting: alone
        _job(tmp_path, "method=erm", "seed=6", "train.precision=fp16"),  # fp16 never packs
        _job(tmp_path, "method=erm", "seed=8", "train.compile=true"),  # packs run eager: a compiled job runs alone
        _job(tmp_path, "method=erm", "seed=7"),
    ]
    assert plan_packs(jobs, max_pack=8) == [[0, 1, 2, 7], [3], [4], [5], [6]]
    assert plan_packs(jobs, max_pack=3) == [[0, 1, 2], [3], [4], [5], [6], [7]]

    # on a cluster the launching machine groups without a memory cap: the node that trains a pack caps it
    assert plan_packs(jobs, max_pack=8, fits=lambda job: 2) == [[0, 1], [2, 7], [3], [4], [5], [6]]


def test_packed_slurm_has_the_options_and_values_of_slurm_plus_max_pack():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

    def launcher(name: str) -> dict:
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        from mm_repro.config import CONF_DIR

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
        return OmegaConf.to_container(cfg.hydra.launcher)

    slurm, packed = launcher("slurm"), launcher("packed_slurm")
    assert packed.pop("max_pack") == 8 and packed.pop("_target_").endswith("PackedSlurmLauncher")
    slurm.pop("_target_")
    assert packed == slurm


class _ClusterJob:
    """A submitit job as `wait_for_job` sees it: done once it wrote its result, or never."""

    job_id, paths = "41_0", None

    def __init__(self, polls_until_done: int | None) -> None:
        self.left = polls_until_done

    def done(self) -> bool:
        if self.left is None:
            return False
        self.left -= 1
        return self.left < 0

    def results(self) -> list:
        return [["returns of the pack"]]


def test_a_pack_job_that_ended_without_its_result_ends_the_wait_and_a_requeued_one_does_not(monkeypatch):
    from mm_repro.errors import RunFailed
    from mm_repro.sweeps import cluster

    states = iter(["RUNNING", "PENDING", "RUNNING", "COMPLETING"])  # requeued once: pending again, not ended
    monkeypatch.setattr(cluster, "slurm_job", lambda job_id: (next(states), "None"))
    assert cluster.wait_for_job(_ClusterJob(4), poll=0, grace=0) == ["returns of the pack"]
    for state in ("CANCELLED", "OUT_OF_MEMORY", None):  # None: SLURM no longer knows the job
        monkeypatch.setattr(cluster, "slurm_job", lambda job_id, s=state: (s, ""))
        with pytest.raises(RunFailed, match=f"it ended {state or 'and left the queue'} without a result"):
            cluster.wait_for_job(_ClusterJob(None), poll=0, grace=0.01)
    monkeypatch.setattr(cluster, "slurm_job", lambda job_id: ("UNKNOWN", ""))  # scontrol unreadable: keep waiting
    assert cluster.wait_for_job(_ClusterJob(3), poll=0, grace=0) == ["returns of the pack"]


def test_a_pack_job_pending_for_a_reason_that_never_clears_is_cancelled(monkeypatch):
    from mm_repro.sweeps import cluster

    cancelled = []
    monkeypatch.setattr(cluster.subprocess, "run", lambda args, **k: cancelled.append(args))
    waiting = iter([("PENDING", "Resources")] * 3)  # a busy cluster: the job waits its turn
    monkeypatch.setattr(cluster, "slurm_job", lambda job_id: next(waiting, ("RUNNING", "None")))
    assert cluster.wait_for_job(_ClusterJob(5), poll=0, grace=0) == ["returns of the pack"] and not cancelled
    monkeypatch.setattr(cluster, "slurm_job", lambda job_id: ("PENDING", "PartitionConfig"))
    with pytest.raises(cluster.NeverRuns, match=r"stayed PENDING \(PartitionConfig\)"):
        cluster.wait_for_job(_ClusterJob(None), poll=0, grace=0.01)
    assert cancelled == [["scancel", "41_0"]]


@pytest.mark.slow
def test_the_packed_table_1a_sweep_runs_on_fixture_files_and_tables_renders_it(cifar10_root, tmp_path):
    proc = _sweep(
        tmp_path,
        cifar10_root,
        "table1",
        "experiment=table1_cifar10",
        "train.epochs=1",
        "hydra.launcher.max_pack=7",
        launcher="packed",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = list((tmp_path / "table1").rglob("result.json"))
    assert len(results) == 45
    assert all(json.loads(p.read_text())["run"]["experiment"] == "table1_cifar10" for p in results)
    tables = run_cli(
        "tables",
        f"runs={tmp_path / 'table1'}",
        f"out={tmp_path / 'out'}",
        "tables=[table1_cifar10]",
        "include_chance=true",  # tiny nets, few epochs: some runs are still at chance
        cwd=tmp_path,
    )
    assert tables.returncode == 0, tables.stderr
    assert "45 complete runs, 0 incomplete, 0 failed, 0 diverged" in tables.stdout
    for arch in ("PreActResNet18", "PreActResNet34", "Wide-ResNet-28-10"):
        for method in ("No Mixup", "Input Mixup (α = 1)", "Manifold Mixup (α = 2)"):
            line = next(x for x in tables.stdout.splitlines() if f"| {arch} | {method} |" in x)
            assert "| 5 |" in line  # five seeds per cell


@pytest.mark.parametrize("command", ["train", pytest.param("plan", marks=pytest.mark.slow)])
def test_a_refused_launcher_option_is_one_line_and_leaves_no_sweep_directory(tmp_path, command):
    proc = run_cli(
        command, "-m", "experiment=smoke", "seed=0,1", "hydra/launcher=packed_slurm", "hydra.launcher.max_pack=0",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == "error: hydra.launcher.max_pack=0 must be >= 1\n"
    assert not list(tmp_path.iterdir())  # no runs/.failures/ left by the sweep's start
