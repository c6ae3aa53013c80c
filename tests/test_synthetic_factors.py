"""Table 8 / Figure 4: the renderer of the official synth_data_exp.py's factors, factor mixup, the classifier, and the
command end to end at a few steps (the plumbing, never the paper's numbers)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import run_cli

from mm_repro.experiments.synthetic import (
    SynthClassifier,
    draw_factors,
    make_batch,
    mix_factors,
    render,
)


def test_a_mix_of_two_factor_settings_renders_the_image_of_the_mixed_factors():
    rng = random.Random(0)
    a, b = draw_factors(rng, "C", True), draw_factors(rng, "C", True)
    lam = 0.3
    mixed = mix_factors(a, b, lam)
    by_hand = [float(int(0.3 * x + 0.7 * y)) for x, y in zip(a, b, strict=True)]  # truncated, as the script
    assert mixed == by_hand
    image = render(mixed)
    assert image.shape == (64, 64) and image.dtype == np.float32 and 0 <= image.min() < image.max() <= 1
    assert np.array_equal(image, render(by_hand))
    pixels = lam * render(a) + (1 - lam) * render(b)
    assert not np.allclose(image, pixels)  # mixing factors is not mixing pixels
    assert np.array_equal(render(mix_factors(a, b, 1.0)), render([float(int(x)) for x in a]))


@pytest.mark.parametrize(
    ("task", "train", "low", "high"), [("A", True, -70, 80), ("A", False, -30, 30), ("B", False, -30, 30)]
)
def test_task_angles_follow_the_class(task, train, low, high):
    rng = random.Random(1)
    for _ in range(200):
        f = draw_factors(rng, task, train)
        angle, label, xlen = f[7], f[8], f[4]
        assert low <= angle <= high
        assert (angle < 0) == (label == 0) if task == "A" else True
        assert (xlen <= 20) == (label == 0)  # a short top bar is a "1"


def test_batches_and_classifier_shapes():
    rng = random.Random(0)
    x, t = make_batch(rng, "C", True, "input")
    assert x.shape == (128, 1, 64, 64) and t.shape == (128,) and ((t > 0) & (t < 1)).any()
    model = SynthClassifier()
    p = model(x)
    assert p.shape == (128,) and torch.all((p > 0) & (p < 1))
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == [32, 64, 128, 256]


@pytest.mark.slow
def test_the_synthetic_command_end_to_end(tmp_path):
    args = ("task=A", "steps=2", "test_batches=1", "seeds=[0,1]", f"out={tmp_path}", "device=cpu")
    proc = run_cli("synthetic", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "table8_taskA.json").read_text())
    assert [(r["method"], r["seed"]) for r in report["results"]] == [
        (m, s) for s in (0, 1) for m in ("none", "input", "factor")
    ]
    assert all(" ± " in row["ours: test accuracy (%)"] for row in report["rows"])  # mean ± std over the 2 seeds
    assert report["provenance"]["command"].startswith("python -m mm_repro synthetic task=A")
    markdown = (tmp_path / "table8_taskA.md").read_text()
    assert "| 94.77 |" in markdown and "| 8.831 |" in markdown  # the paper's numbers beside ours
    assert (tmp_path / "figure4_taskA.png").stat().st_size > 10_000
