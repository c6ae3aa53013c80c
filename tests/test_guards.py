"""Guards on the numbers behind the verdicts: each test fails under one plausible one-line bug that no other test
caught (a mutation check of the suite found them): the SVD's measure and its images, each claim's direction, the best
checkpoint's weights, Table 8's factor mixup, the class subset, MNIST's normalisation, where the MNIST nets drop out,
and which runs a pack keeps out. Each computes what it expects independently of the code under test."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mm_repro import api
from mm_repro.data import load_splits
from mm_repro.experiments import flattening_report
from mm_repro.experiments.flattening import Net, measure, nets_of
from mm_repro.training.loop import train_jobs
from tests.conftest import compose_train, data_args, tiny_job, write_mnist


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A finished section-3.2 net (narrow) on MNIST-format files, its run directory."""
    root = write_mnist(tmp_path_factory.mktemp("mnist"), n_train=200, n_test=100)
    run_dir = tmp_path_factory.mktemp("run") / "net"
    extra = ["model=mlp_section3_2", "model.width=16", "train.optimizer=adam", "train.lr=1e-3", "method=erm"]
    (result,) = train_jobs([tiny_job(run_dir, *data_args(root, "mnist"), *extra)])
    assert isinstance(result, dict)
    return run_dir


@pytest.mark.parametrize(("split", "per_class"), [("test", 4), ("train", 7)])
def test_the_svd_is_of_the_split_and_count_asked_and_the_sum_leaves_out_the_largest(mnist_run, split, per_class):
    study = SimpleNamespace(svd_split=split, svd_per_class=per_class)
    got = measure(mnist_run, Net("mlp_section3_2", 1, "baseline"), study)
    model, cfg = api.load_model(mnist_run)
    images = getattr(load_splits(cfg.dataset), split)
    keep = np.concatenate([np.flatnonzero(images.labels.numpy() == c)[:per_class] for c in range(10)])
    with torch.no_grad():
        x = (images.images[keep].float() / 255 - model.mean) / model.std
        h = model.net.forward_until(x, 1).double().numpy()
    labels = images.labels.numpy()[keep]
    spectra = [np.linalg.svd(h[labels == c], compute_uv=False) for c in range(10)]
    assert got["mean_top"] == pytest.approx(np.mean([s[0] for s in spectra]), rel=1e-5)
    assert got["mean_rest"] == pytest.approx(np.mean([s[1:].sum() for s in spectra]), rel=1e-5)  # the largest out


def _report(study: str, values: dict[tuple[str, str], list[float]], key: str) -> dict:
    results = []
    for (setup, method), seeds in values.items():
        net = next(n for n in nets_of(study) if n.method == method and (not setup or n.setup == setup))
        for seed, v in enumerate(seeds):
            results.append({"net": asdict(net), "seed": seed, "at_chance": False, "test_accuracy": 98.0,
                            "mean_top": v, "mean_rest": v})  # fmt: skip
    return {"study": study, "results": results}


def test_section_3_2s_claims_hold_on_the_papers_order_and_fail_on_its_reverse():
    paper = flattening_report.PAPER["section3_2"]
    # our values in the paper's order by the sum of the others, manifold mixup smallest, three tight seeds each
    order = sorted(paper, key=lambda m: paper[m]["rest"])
    agree = {("", m): [10.0 * (i + 1) + d for d in (-0.1, 0.0, 0.1)] for i, m in enumerate(order)}
    claims = {c["claim"]: c["verdict"] for c in flattening_report.claims(_report("section3_2", agree, "rest"))}
    assert claims["manifold mixup leaves the smallest sum of the other singular values (it flattens most)"] == "holds"
    assert claims["the order of the methods by their sum of the other singular values, largest first"] == "holds"
    reverse = {("", m): [10.0 * (len(order) - i) + d for d in (-0.1, 0.0, 0.1)] for i, m in enumerate(order)}
    claims = {c["claim"]: c["verdict"] for c in flattening_report.claims(_report("section3_2", reverse, "rest"))}
    assert claims["manifold mixup leaves the smallest sum of the other singular values (it flattens most)"] == (
        "does not hold"
    )
    assert claims["the order of the methods by their sum of the other singular values, largest first"] == (
        "does not hold"
    )


@pytest.mark.parametrize(("baseline", "verdict"), [(100.0, "holds"), (10.0, "does not hold")])
def test_appendix_gs_mixups_below_the_baseline_is_decided_in_its_direction(baseline, verdict):
    setup = "figure9 (12 units after 3 layers)"
    values = {(setup, "baseline"): [baseline - 1, baseline, baseline + 1],
              (setup, "input_mixup"): [49.0, 50.0, 51.0], (setup, "manifold_mixup"): [59.0, 60.0, 61.0]}  # fmt: skip
    claims = {c["claim"]: c["verdict"] for c in flattening_report.claims(_report("appendix_g", values, "top"))}
    assert claims[f"{setup}: both mixups below the baseline"] == verdict


def test_the_best_checkpoint_is_the_best_epochs_weights_not_the_last(tmp_path):
    from mm_repro import records

    for seed in range(6):  # a tiny run whose best epoch is not its last (lr 1: its test error moves about)
        run_dir = tmp_path / f"s{seed}"
        (result,) = train_jobs([tiny_job(run_dir, f"seed={seed}", "train.epochs=4", "train.lr=1.0", "method=erm")])
        if result["best"]["epoch"] != result["epochs"]:
            break
    else:
        pytest.fail("no tiny run had its best epoch before its last")
    best = records.load_checkpoint(run_dir / records.BEST_CHECKPOINT, resumable=False)["model"]
    last = records.load_checkpoint(run_dir / records.CHECKPOINT)["model"]
    model, _ = api.load_model(run_dir, checkpoint="best")
    loaded = model.net.state_dict()
    assert all(torch.equal(loaded[k], best[k]) for k in best)
    assert any(not torch.equal(loaded[k], last[k]) for k in last)


def test_table8s_factor_mixup_renders_the_mixed_factors_not_mixed_pixels():
    import random

    from mm_repro.experiments import synthetic

    rng, replay = random.Random(5), random.Random(5)
    x, t = synthetic.make_batch(rng, "C", True, "factor")
    for i in range(3):  # the script's draws, replayed: lam, then the two images' factors
        lam = replay.uniform(0, 1)
        a, b = synthetic.draw_factors(replay, "C", True), synthetic.draw_factors(replay, "C", True)
        expected = synthetic.render(synthetic.mix_factors(a, b, lam))
        assert np.array_equal(x[i, 0].numpy(), expected)
        pixels = lam * synthetic.render(a) + (1 - lam) * synthetic.render(b)
        assert not np.allclose(expected, pixels)  # mixing in factor space is not mixing pixels
        assert float(t[i]) == pytest.approx(lam * a[-1] + (1 - lam) * b[-1])


def test_a_class_subset_filters_the_test_split_too(tmp_path):
    root = write_mnist(tmp_path, n_train=100, n_test=60)
    cfg = tiny_job(tmp_path / "r", *data_args(root, "mnist"), "model=mlp_section3_2", "dataset.classes=[4,9]").cfg
    splits = load_splits(cfg.dataset)
    assert set(splits.train.labels.tolist()) == {4, 9} and set(splits.test.labels.tolist()) == {4, 9}
    assert len(splits.test.labels) == 12  # 6 of each of the two digits among 60 test images


def test_the_mnist_nets_drop_out_after_each_hidden_layer_but_the_bottleneck():
    from mm_repro.models.mlp import MLP

    net = MLP(784, [64, 64, 2, 64], 10, bottleneck=3, dropout=0.9).train()
    seen: dict[int, torch.Tensor] = {}
    for i, layer in enumerate([*net.layers, net.head]):
        layer.register_forward_pre_hook(lambda m, args, i=i: seen.setdefault(i, args[0]))
    torch.manual_seed(0)
    net(torch.rand(32, 1, 28, 28) + 0.1)
    zeros = {i: float((v == 0).float().mean()) for i, v in seen.items()}
    assert zeros[0] == 0  # the pixels are not dropped
    assert zeros[1] > 0.6 and zeros[2] > 0.6  # after hidden layers 1 and 2 (LeakyReLU leaves no zeros itself)
    assert zeros[3] == 0  # the bottleneck's output is kept whole (Figure 5's states)
    assert zeros[4] > 0.6  # after hidden layer 4


@pytest.mark.parametrize(
    "overrides",
    [
        ("train.optimizer=adam",),  # the pack's update is SGD's
        ("model.dropout=0.5",),
        ("method=cutout",),
        ("dataset.valid_per_class=2",),
    ],
)
def test_a_run_the_pack_cannot_fuse_trains_alone(overrides):
    from mm_repro.sweeps.packed import trains_alone
    from mm_repro.training.checks import validate_train

    base = ["dataset=synthetic", "dataset.train_size=100", "dataset.test_size=50", "model.width=4"]
    assert not trains_alone(validate_train(compose_train(*base)))
    assert trains_alone(validate_train(compose_train(*base, *overrides)))
