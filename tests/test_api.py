"""The Python API (docs/api.md), tested as users call it: every example of docs/api.md runs, exactly as printed, in
a directory that holds a finished run at runs/my-run; and the mixing step it offers is the official one."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_args, tiny_job, write_cifar, write_mnist

from mm_repro import api
from mm_repro.data import load_splits
from mm_repro.training.loop import train_jobs

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


@pytest.mark.parametrize(
    "dataset",
    ["synthetic", pytest.param("mnist", marks=pytest.mark.slow), pytest.param("cifar10", marks=pytest.mark.slow)],
)
def test_every_example_of_the_api_page_runs_as_printed(tmp_path, monkeypatch, capsys, dataset):
    # on a CIFAR-shaped run, an MNIST run (1 x 28 x 28, the paper's net) and a CIFAR-10 run from real-format files
    monkeypatch.chdir(tmp_path)
    data = {
        "synthetic": ["dataset.train_size=400"],
        "mnist": [*data_args(write_mnist(tmp_path / "data"), "mnist"), "model=mlp_section3_2"],
        "cifar10": data_args(write_cifar(tmp_path / "data", "cifar10"), "cifar10"),
    }[dataset]
    train_jobs([tiny_job(Path("runs/my-run"), *data, "train.epochs=4", "model.width=8")])
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 5
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {})
    printed = capsys.readouterr().out
    assert "manifold logits (2, 10)" in printed and "0 " in printed
    if dataset == "synthetic":
        assert "synthetic preactresnet18 manifold 1" in printed


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_a_loaded_model_takes_pixels_and_gives_the_runs_own_test_error(tmp_path, dataset):
    root = write_mnist(tmp_path / "data") if dataset == "mnist" else write_cifar(tmp_path / "data", "cifar10")
    extra = ["model=mlp_section3_2", "train.optimizer=adam", "train.lr=1e-3"] if dataset == "mnist" else []
    (result,) = train_jobs([tiny_job(tmp_path / "run", *data_args(root, dataset), *extra, "model.width=16")])
    model, cfg = api.load_model(tmp_path / "run")
    test = load_splits(cfg.dataset).test
    with torch.no_grad():
        wrong = (model(test.images.float() / 255).argmax(1) != test.labels).float().mean().item() * 100
    assert wrong == pytest.approx(result["final"]["test_error"], abs=100 / len(test.labels))  # one image at most
    assert model.image_shape == tuple(test.images.shape[1:])


def test_the_mixing_step_is_the_official_draw_and_mix():
    # the draws in the official order and streams (python's randint for k, numpy's beta then permutation), the
    # hidden state at k mixed with its partners, the targets alike
    net = api.Staged(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    seen = []
    net.stages[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x, y = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0])
    mixup = api.ManifoldMixup(alpha=2.0, layers=[1], num_classes=4, seed=3)
    loss = mixup.loss(net, x, y)
    rng = np.random.RandomState(3)
    lam = float(np.float32(rng.beta(2.0, 2.0)))
    index = torch.as_tensor(rng.permutation(5))
    h = x.flatten(1)
    torch.testing.assert_close(seen[0], h * lam + h[index] * (1 - lam))
    targets = torch.nn.functional.one_hot(y, 4).float()
    mixed = targets * lam + targets[index] * (1 - lam)
    expected = torch.nn.functional.binary_cross_entropy(torch.softmax(net.stages[1](seen[0]), 1), mixed)
    torch.testing.assert_close(loss, expected)
