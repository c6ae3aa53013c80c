"""The fast paths compute what the reference path computes: bf16/fp16 against fp32, compiled against eager, with no
recompilation per lam; and `bench` runs on the CPU in a reduced form. No timing assertions here: speed is measured
by `bench` and recorded in docs/benchmarks.md."""

from __future__ import annotations

import json

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from mm_repro.config import validate_train
from mm_repro.models import build
from mm_repro.train import Network, Stepper
from tests.conftest import compose_train, run_cli


def _losses(precision: str, steps: int = 4) -> list[float]:
    cfg = validate_train(compose_train("dataset=synthetic", "model.width=8", f"train.precision={precision}"))
    torch.manual_seed(0)
    model = build("preactresnet18", 10, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    stepper = Stepper(model, opt, cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    out = []
    for i in range(steps):
        import random

        import numpy as np

        random.seed(i)
        np.random.seed(i)
        torch.manual_seed(i)
        out.append(stepper.step(x, y).item())
    return out


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_losses_agree_with_fp32_over_a_few_steps(precision):
    reference = _losses("fp32")
    half = _losses(precision)
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
    assert result["torch_version"] == torch.__version__
    assert "ours: train step" in proc.stdout and "official-style: data pipeline" in proc.stdout
