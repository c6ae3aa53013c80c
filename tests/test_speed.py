"""The fast paths compute what the reference path computes: bf16/fp16 against fp32, compiled against eager, with no
recompilation per lam; and `bench` runs on the CPU in a reduced form. No timing assertions here: speed is measured
by `bench` and recorded in docs/benchmarks.md."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter

from mm_repro.config import validate_train
from mm_repro.models import build
from mm_repro.train import Network, Stepper, build_model_and_optimizer, compile_network
from tests.conftest import compose_train, run_cli


def _train_steps(steps: int, *overrides: str) -> tuple[list[float], nn.Module, torch.optim.Optimizer]:
    """Losses of `steps` seeded steps on one fixed batch, through the training path's own builders."""
    cfg = validate_train(
        compose_train("dataset=synthetic", "model.width=16", "method=manifold", "device=cpu", *overrides)
    )
    torch.manual_seed(0)
    model, optimizer = build_model_and_optimizer(cfg, torch.device("cpu"))
    stepper = Stepper(model, optimizer, cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    losses = []
    for i in range(steps):
        random.seed(i)
        np.random.seed(i)
        torch.manual_seed(i)
        losses.append(stepper.step(x, y).item())
    return losses, model, optimizer


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_losses_agree_with_fp32_over_a_few_steps(precision):
    reference, _, _ = _train_steps(4, "train.precision=fp32")
    half, _, _ = _train_steps(4, f"train.precision={precision}")
    # Tolerance: 3 % relative. bf16 keeps 8 bits of mantissa, and four SGD steps compound the rounding.
    assert half == pytest.approx(reference, rel=0.03)
    assert reference[-1] < reference[0]  # the steps did train


def test_no_recompilation_per_lam_and_one_graph_per_mixing_point():
    torch.manual_seed(0)
    net = Network(build("preactresnet18", 10, width=4))
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter)
    x, t, idx = torch.randn(4, 3, 32, 32), torch.zeros(4, 10), torch.randperm(4)
    for k in (0, 1, 2):
        for lam in (0.1, 0.5, 0.9):
            compiled(x, t, k, torch.full((), lam), idx)
    assert counter.frame_count == 3  # k = 0, 1, 2; nine different lam values


def test_one_static_graph_per_mixing_point_and_batch_size_even_past_the_default_recompile_limit():
    # PreActResNet offers 5 mixing points; with a smaller last batch that is 10 graphs, more than dynamo's default
    # limit of 8, past which it would silently fall back to eager.
    torch._dynamo.reset()  # earlier tests' graphs of Network.forward would count towards the limit
    torch.manual_seed(0)
    net = Network(build("preactresnet18", 10, width=4))
    counter = CompileCounter()
    compiled = compile_network(net, [0, 1, 2, 3, 4], backend=counter)
    for batch in (6, 4, 6):
        x, t, idx = torch.randn(batch, 3, 32, 32), torch.zeros(batch, 10), torch.randperm(batch)
        for k in (0, 1, 2, 3, 4):
            for lam in (0.2, 0.7):
                compiled(x, t, k, torch.full((), lam), idx)
    assert counter.frame_count == 10


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
    # Another memory layout picks other convolution kernels, so sums run in another order: equal up to rounding.
    reference, ref_model, _ = _train_steps(1, "train.channels_last=false")
    fast, model, _ = _train_steps(1, "train.channels_last=true")
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not ref_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast == pytest.approx(reference, rel=1e-6)
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_compiled_and_eager_outputs_agree():
    torch.manual_seed(0)
    net = Network(build("preactresnet18", 10, width=4))
    compiled = torch.compile(net)
    x, t, idx = torch.randn(8, 3, 32, 32), torch.zeros(8, 10), torch.randperm(8)
    lam = torch.full((), 0.3)
    eager_logits, eager_t = net(x, t, 2, lam, idx)
    comp_logits, comp_t = compiled(x, t, 2, lam, idx)
    torch.testing.assert_close(comp_logits, eager_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(comp_t, eager_t)


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
        f"out={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert result["ratio"] == pytest.approx(result["ours_images_per_second"] / result["official_images_per_second"])
    assert result["data_ratio"] > 0 and 0 < result["mfu_ours"] < 1
    assert result["measured_peak_dtype"] == "float32" and result["compile_mode"] is None
    assert result["torch_version"] == torch.__version__
    assert "ours: train step" in proc.stdout and "official-style: data pipeline" in proc.stdout
