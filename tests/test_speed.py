"""The fast paths compute what the reference path computes: bf16/fp16 against fp32, compiled against eager, fused
SGD and channels_last; compiled graphs per mixing point, never per lam, and none carried from one job of a sweep to
the next; `wall_seconds` is the run's real time; `bench` runs and reports what it measured. Speed itself is measured
by `bench` and recorded in docs/benchmarks.md, never asserted; the one test that compares times (a run's records
against the wall clock) is marked slow, out of the default run."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter
from torch.utils._python_dispatch import TorchDispatchMode

from mm_repro.bench import measure as bench
from mm_repro.config import MethodConfig, ModelConfig
from mm_repro.models import build
from mm_repro.training import loop as train
from mm_repro.training.builders import build_model, single_trainer
from mm_repro.training.checks import validate_train
from mm_repro.training.distributed import World
from mm_repro.training.randomness import RunRandom
from mm_repro.training.run import Job
from mm_repro.training.step import MixedForward, compile_module
from tests.conftest import compose_train, run_cli

CPU = torch.device("cpu")


def _train_steps(steps: int, *overrides: str) -> tuple[list[float], nn.Module, torch.optim.Optimizer]:
    """Losses of `steps` seeded steps on one fixed batch, through the builders `train` uses."""
    cfg = validate_train(
        compose_train("dataset=synthetic", "model.width=16", "method=manifold", "device=cpu", *overrides)
    )
    model = build_model(cfg, CPU, (3, 32, 32))
    trainer = single_trainer(cfg, model, RunRandom(0, CPU), World())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    losses = [trainer.train_step([x], [y]).item() for _ in range(steps)]
    return losses, model, trainer.optimizer


@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])  # fp16 on a CPU: 16 s
def test_half_precision_losses_agree_with_fp32_over_a_few_steps(precision):
    reference, _, _ = _train_steps(4, "train.precision=fp32")
    half, _, _ = _train_steps(4, f"train.precision={precision}")
    # Tolerance: 3 % relative. bf16 keeps 8 bits of mantissa, and four SGD steps compound the rounding.
    assert half == pytest.approx(reference, rel=0.03)
    assert reference[-1] < reference[0]  # the steps did train


def test_no_recompilation_per_lam_and_one_graph_per_mixing_point():
    torch._dynamo.reset()
    net = MixedForward(build("preactresnet18", 10, width=4))
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter)
    x, t, idx = torch.randn(4, 3, 32, 32), torch.zeros(4, 10), torch.randperm(4)
    for k in (0, 1, 2):
        for lam in (0.1, 0.5, 0.9):
            compiled(x, t, k, torch.full((), lam), idx)
    assert counter.frame_count == 3  # k = 0, 1, 2; nine different lam values


@pytest.mark.slow  # nine compiled graphs: ~9 s on 2 cores
def test_one_static_graph_per_mixing_point_and_batch_size_even_past_the_default_recompile_limit():
    # PreActResNet offers 5 mixing points; with a smaller last batch that is 10 graphs, more than dynamo's default
    # limit of 8, past which it would silently fall back to eager.
    torch._dynamo.reset()  # earlier tests' graphs of MixedForward.forward would count towards the limit
    net = MixedForward(build("preactresnet18", 10, width=4))
    counter = CompileCounter()
    compiled = compile_module(net, 5, backend=counter)
    for batch in (6, 4, 6):
        x, t, idx = torch.randn(batch, 3, 32, 32), torch.zeros(batch, 10), torch.randperm(batch)
        for k in (0, 1, 2, 3, 4):
            for lam in (0.2, 0.7):
                compiled(x, t, k, torch.full((), lam), idx)
    assert counter.frame_count == 10


@pytest.mark.slow
def test_every_job_of_a_compiled_sweep_in_one_process_stays_compiled(tmp_path):
    # Three models in one process (the basic launcher): 6 graphs each (3 mixing points x 2 batch sizes) on one code
    # object. Without a dynamo reset between jobs, the third job would pass the recompile limit and fall back to
    # eager without a word.
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train",
        "-m",
        "experiment=smoke",
        "model=preactresnet18,preactresnet34,wrn28_2",
        "model.width=4",
        "train.compile=true",
        "train.compile_backend=eager",
        "train.epochs=1",
        "train.milestones=[]",
        "train.batch_size=30",
        "dataset.train_size=100",
        "dataset.test_size=50",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        env={"TORCH_LOGS": "recompiles"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(sweep.rglob("result.json"))) == 3
    assert "Recompiling function forward" in proc.stderr  # the log is on: graphs per point and batch size show
    assert "hit config.recompile_limit" not in proc.stderr


def test_fused_sgd_updates_as_the_reference_sgd():
    # CUDA's default, chosen explicitly on the CPU: 4 Nesterov steps with weight decay. The fused kernel may contract
    # a multiply-add, so equality is to float32 rounding (5e-10 at most here), far below one step's update.
    reference, ref_model, ref_opt = _train_steps(4, "train.fused=false")
    fused, model, opt = _train_steps(4, "train.fused=true")
    assert opt.defaults["fused"] and not ref_opt.defaults["fused"]
    assert fused == pytest.approx(reference, rel=1e-6) and reference[-1] != reference[0]
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-8, msg=name)


def test_channels_last_computes_the_same_step_as_nchw():
    # Another memory layout picks other convolution kernels, so sums run in another order: equal up to rounding. How far
    # that rounding carries into a step's update depends on the kernels, which the thread count picks too, and the
    # backward through BatchNorm amplifies it (a difference of means): measured here, the two updates differ by at most
    # 1.5e-5 of their length at 2 threads and 2.1 % at 1 thread (the stem's, deepest in the backward). So each
    # tensor's update must agree to 5 % of its length: rounding passes, a wrong layout (a whole update off) does not.
    _, start, _ = _train_steps(0, "train.channels_last=false")
    initial = {k: v.clone() for k, v in start.state_dict().items()}
    reference, ref_model, _ = _train_steps(1, "train.channels_last=false")
    fast, model, _ = _train_steps(1, "train.channels_last=true")
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not ref_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast == pytest.approx(reference, rel=1e-6)
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values(), strict=True):
        if not a.is_floating_point():
            assert torch.equal(a, b), name
            continue
        step = (a - initial[name]).norm()
        assert (b - a).norm() <= 0.05 * step + 1e-7, (name, float((b - a).norm()), float(step))


@pytest.mark.slow
def test_compiled_and_eager_outputs_agree():
    torch.manual_seed(0)
    net = MixedForward(build("preactresnet18", 10, width=4))
    compiled = torch.compile(net)
    x, t, idx = torch.randn(8, 3, 32, 32), torch.zeros(8, 10), torch.randperm(8)
    lam = torch.full((), 0.3)
    eager_logits, eager_t = net(x, t, 2, lam, idx)
    comp_logits, comp_t = compiled(x, t, 2, lam, idx)
    torch.testing.assert_close(comp_logits, eager_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(comp_t, eager_t)


@pytest.mark.slow
def test_wall_seconds_is_the_runs_real_time(tmp_path):
    cfg = validate_train(
        compose_train(
            "experiment=smoke",
            "model.width=4",
            "train.epochs=4",
            "train.milestones=[]",
            "dataset.train_size=400",
            "train.checkpoint_seconds=0",
            "device=cpu",
        )
    )
    start = time.perf_counter()
    result = train.run(Job(cfg, tmp_path / "run", {"seed": 0}))
    real = time.perf_counter() - start
    assert result["wall_seconds"] == pytest.approx(real, rel=0.05)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["seconds"] for r in rows) == pytest.approx(result["wall_seconds"], rel=0.05)
    assert all(r["train_images_per_second"] > 400 / r["seconds"] for r in rows)  # steps alone beat the epoch's time


@pytest.mark.slow  # ~5 s: times both trainers
def test_bench_reports_ours_over_official_not_the_other_way_round(monkeypatch):
    rates = iter([(300.0, 100.0), (5000.0, 500.0)])  # (ours, official): the steps, then the data pipelines
    monkeypatch.setattr(bench, "median_rates", lambda *args, **kwargs: next(rates))
    cfg = bench.BenchConfig(
        model=ModelConfig(width=4),
        method=MethodConfig(name="erm"),
        images=64,
        eval_images=16,
        batch_size=16,
        warmup=1,
        steps=1,
        repeats=1,
        workers=0,
        pack=0,
    )
    r = bench.run_bench(cfg)
    assert (r["ours_images_per_second"], r["official_images_per_second"], r["ratio"]) == (300.0, 100.0, 3.0)
    assert (r["data_ours_images_per_second"], r["data_ratio"]) == (5000.0, 10.0)
    assert r["mfu_ours"] == pytest.approx(3 * r["mfu_official"])
    assert 0 < r["epoch_overhead"] < 1 and "pack" not in r


@pytest.mark.slow
def test_bench_runs_on_cpu_in_reduced_form(tmp_path):
    proc = run_cli(
        "bench",
        "device=cpu",
        "model.width=4",
        "batch_size=16",
        "steps=2",
        "warmup=1",
        "repeats=1",
        "workers=1",
        "images=256",
        "eval_images=64",
        "pack=2",
        f"out={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert result["data_ratio"] > 0 and 0 < result["mfu_ours"] < 1 and 0 < result["epoch_overhead"] < 1
    assert result["measured_peak_mode"] == "float32" and result["compile_mode"] is None
    assert result["pack"] == 2 and result["packed_images_per_second"] > 0
    assert result["torch_version"] == torch.__version__
    for row in ("ours: train step", "official-style: data pipeline", "packed: 2 runs", "epoch outside training"):
        assert row in proc.stdout
    assert np.isfinite(result["checkpoint_stall_seconds"]) and result["eval_seconds_per_image"] > 0
    # `plan` estimates a sweep of the benched setup from this very file
    plan = run_cli(
        "plan", "dataset=synthetic", "model.width=4", "train.batch_size=16", "device=cpu", "logger=none",
        "train.epochs=2", "train.milestones=[]", "seed=0,1", "hydra/launcher=packed", f"bench={tmp_path}", cwd=tmp_path,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    assert f"CPU-hours ({tmp_path / 'bench-cpu.json'}: packed 2: " in plan.stdout


def test_the_official_style_loader_keeps_an_epochs_last_smaller_batch():
    # The official `load_data_subset` builds its training DataLoader without drop_last (docs/protocol.md), so an
    # epoch of 250 images at batch 100 ends with a batch of 50; the baseline `bench` times must do the same.
    from mm_repro.bench.official import official_loader
    from mm_repro.config import DatasetConfig
    from mm_repro.data import random_split

    loader = official_loader(random_split(250, 0), DatasetConfig(), 100, 0, CPU)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [100, 100, 50]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(random_split(250, 0).labels.tolist())


@pytest.mark.slow
def test_a_bf16_bench_writes_its_json_and_says_its_packed_row_was_skipped(tmp_path, monkeypatch):
    # bf16 runs train alone (packs are fp32): the packed row is skipped, said in the JSON and the table, and no
    # timing is wasted on it; the rest of the bench runs in bf16 on the CPU (autocast)
    from mm_repro.commands.bench import run as main

    monkeypatch.setattr(bench, "measure_packed", lambda *a: pytest.fail("a bf16 pack must not be timed"))
    options = {"device": "cpu", "model": {"width": 4}, "method": {"name": "erm"}, "precision": "bf16", "pack": 3,
               "images": 64, "eval_images": 16, "batch_size": 16, "warmup": 1, "steps": 1, "repeats": 1, "workers": 0,
               "out": str(tmp_path)}  # fmt: skip
    main(options)
    result = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert result["precision"] == "bf16" and result["ours_images_per_second"] > 0
    assert result["pack_skipped"] == "bf16 runs are not packed (packs train in fp32 only)" and "pack" not in result


class _HostSyncs(TorchDispatchMode):
    """The ops that make a GPU step wait for the device: a tensor read on the host (`.item()`, `bool(t)`: aten's
    _local_scalar_dense) or an op whose output size depends on the data (nonzero, masked_select, unique)."""

    SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "item")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.SYNCING:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("runs", "precision"), [(1, "fp32"), (1, "bf16"), (2, "fp32")])  # packs are fp32 only
def test_a_training_step_makes_no_host_synchronisation(runs, precision):
    # On a GPU each of these would stall the step; a CPU run shows the same ops to a dispatch mode.
    from mm_repro.data import DeviceLoader, make_synthetic
    from mm_repro.training.builders import packed_trainer

    overrides = ["dataset=synthetic", "model.width=8", "method=manifold", "device=cpu", f"train.precision={precision}"]
    cfgs = [validate_train(compose_train(*overrides, f"seed={s}")) for s in range(runs)]
    models = [build_model(c, CPU, (3, 32, 32)) for c in cfgs]
    rngs = [RunRandom(c.seed, CPU) for c in cfgs]
    trainer = single_trainer(cfgs[0], models[0], rngs[0], World()) if runs == 1 else packed_trainer(cfgs, models, rngs)
    loader = DeviceLoader(make_synthetic(10, 64, 16)[0], cfgs[0].dataset, 16, CPU, True)
    order = loader.order(rngs[0].torch)
    batches = [loader.batch(order, i, rngs[0].torch) for i in range(3)]
    trainer.train_step([batches[0][0]] * runs, [batches[0][1]] * runs)  # the first step builds the optimizer state
    with _HostSyncs() as syncs:
        for x, y in batches[1:]:
            batch = loader.batch(order, 1, rngs[0].torch)  # the loader's crop and flip too
            losses = trainer.train_step([x] * runs, [y] * runs)
    assert syncs.seen == [] and batch[0].shape == (16, 3, 32, 32) and losses.shape == (runs,)


def test_a_checkpoints_copy_to_host_is_one_pinned_non_blocking_copy_per_tensor_and_one_sync(monkeypatch):
    from mm_repro.records import checkpoint

    pinned, syncs = [], []
    monkeypatch.setattr(checkpoint, "host_buffer", lambda t, pin: pinned.append(pin) or torch.empty_like(t))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))

    class Copies(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.blocking: list[bool] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ == "copy_":
                self.blocking.append(not (kwargs or {}).get("non_blocking", args[2] if len(args) > 2 else False))
            return func(*args, **(kwargs or {}))

    model = build("preactresnet18", 10, width=4)
    state = {"model": model.state_dict(), "epoch": 3, "rng": [torch.zeros(5, dtype=torch.uint8)]}
    with Copies() as copies:
        host = checkpoint.to_host(state, torch.device("cuda", 0))
    tensors = len(state["model"]) + 1
    assert pinned == [True] * tensors and copies.blocking == [False] * tensors and syncs == [torch.device("cuda", 0)]
    assert all(torch.equal(host["model"][k], v) for k, v in state["model"].items()) and host["epoch"] == 3
    assert all(host["model"][k].data_ptr() != v.data_ptr() for k, v in state["model"].items())
