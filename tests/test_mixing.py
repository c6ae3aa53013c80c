"""Mixing semantics: one lam and one pairing for hidden states and targets, the official draw order and streams,
k uniform over S, lam ~ Beta(a, a), mixing at exactly layer k (forward hooks), ERM mixing nothing, and the loss the
config names reaching the step that `train` builds."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mm_repro.method import mixing
from mm_repro.method.losses import LOSSES, bce_softmax, soft_ce
from mm_repro.method.mixing import MixSpec
from mm_repro.models import build
from mm_repro.training.builders import build_trainer
from mm_repro.training.checks import validate_train
from mm_repro.training.distributed import World
from mm_repro.training.randomness import RunRandom
from mm_repro.training.run import Job
from mm_repro.training.step import MixedForward, TrainStep
from tests.conftest import compose_train

CPU = torch.device("cpu")


def test_hidden_states_and_targets_share_lam_and_pairing():
    torch.manual_seed(0)
    h = torch.randn(8, 4, 5, 5)
    y = torch.arange(8) % 3
    targets = F.one_hot(y, 3).float()
    index = torch.randperm(8)
    lam = 0.3
    h_mixed, t_mixed = mixing.mix(h, targets, lam, index)
    torch.testing.assert_close(h_mixed, h * lam + h[index] * (1 - lam), rtol=0, atol=0)
    for i in range(8):  # each soft target puts lam on its own class and 1 - lam on its partner's
        expected = torch.zeros(3)
        expected[y[i]] += lam
        expected[y[index[i]]] += 1 - lam
        torch.testing.assert_close(t_mixed[i], expected)
    flipped, _ = mixing.mix(h, targets, lam, None)  # pairing=flip: the reversed batch, no index tensor
    torch.testing.assert_close(flipped, h * lam + h.flip(0) * (1 - lam), rtol=0, atol=0)


def _official_draws(seed: int, alpha: float, batch: int, hidden: bool) -> tuple[int, float, np.ndarray]:
    """The official code's sequence (preresnet.py forward and mixup_process) on seeded global generators."""
    random.seed(seed)
    np.random.seed(seed)
    layer_mix = random.randint(0, 2) if hidden else 0  # `--train mixup` sets layer_mix = 0 without a draw
    lam = np.random.beta(alpha, alpha)
    lam = float(np.array([lam]).astype("float32")[0])
    indices = np.random.permutation(batch)
    return layer_mix, lam, indices


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_draws_follow_the_official_order_and_streams(seed):
    for spec, hidden in ((MixSpec(2.0, (0, 1, 2)), True), (MixSpec(1.0, (0,)), False)):
        rng = RunRandom(seed, CPU)
        ours = [mixing.draw(spec, 10, rng.python, rng.numpy) for _ in range(3)]
        k, lam, index = _official_draws(seed, spec.alpha, 10, hidden)
        assert (ours[0].k, ours[0].lam) == (k, lam)
        assert ours[0].index.tolist() == index.tolist()
        # and the streams go on as the official ones: the next draws come from the same generators
        random.seed(seed)
        np.random.seed(seed)
        for d in ours:
            assert d.k == (random.randint(0, 2) if hidden else 0)
            assert d.lam == float(np.float32(np.random.beta(spec.alpha, spec.alpha)))
            assert d.index.tolist() == np.random.permutation(10).tolist()


def test_flip_pairing_draws_no_permutation():
    rng = RunRandom(0, CPU)
    d = mixing.draw(MixSpec(2.0, (0, 1, 2), "flip"), 6, rng.python, rng.numpy)
    assert d.index is None
    again = RunRandom(0, CPU)
    again.python.randint(0, 2)
    again.numpy.beta(2.0, 2.0)
    assert rng.numpy.get_state()[1].tolist() == again.numpy.get_state()[1].tolist()  # nothing else drawn


def test_layer_frequencies_are_uniform_over_the_eligible_set():
    rng = RunRandom(0, CPU)
    counts = Counter(mixing.draw(MixSpec(2.0, (0, 1, 2), "flip"), 2, rng.python, rng.numpy).k for _ in range(6000))
    assert set(counts) == {0, 1, 2}
    assert stats.chisquare([counts[k] for k in (0, 1, 2)]).pvalue > 1e-3


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_lam_follows_beta_alpha_alpha(alpha):
    rng = RunRandom(1, CPU)
    lams = [mixing.draw(MixSpec(alpha, (0,), "flip"), 2, rng.python, rng.numpy).lam for _ in range(4000)]
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    assert stats.kstest(lams, stats.beta(alpha + 1.5, alpha + 1.5).cdf).pvalue < 1e-3


def _step(model: torch.nn.Module, spec: MixSpec | None, seed: int = 5, loss: str = "bce_softmax") -> TrainStep:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return TrainStep(MixedForward(model), opt, LOSSES[loss], 10, spec, "fp32", RunRandom(seed, CPU))


def _consumer(model: torch.nn.Module, k: int) -> tuple[torch.nn.Module, object]:
    """The module that reads mixing point k, and what it should see given the mixed hidden state."""
    if k == 0:
        return model.conv1, lambda mixed: mixed
    if k < model.num_stages:
        return getattr(model, f"layer{k + 1}"), lambda mixed: mixed
    if hasattr(model, "bn1"):  # WRN: the head's final BN reads the last stage's output
        return model.bn1, lambda mixed: mixed
    return model.linear, lambda mixed: F.avg_pool2d(mixed, 4).flatten(1)


@pytest.mark.parametrize(("name", "k"), [("preactresnet18", k) for k in range(5)] + [("wrn28_2", k) for k in range(4)])
def test_mixing_happens_at_exactly_layer_k(name, k):
    torch.manual_seed(0)
    model = build(name, 10, width=4)
    seen: dict[str, torch.Tensor] = {}
    if k > 0:
        getattr(model, f"layer{k}").register_forward_hook(lambda m, i, out: seen.setdefault("point", out.detach()))
    consumer, expect = _consumer(model, k)
    consumer.register_forward_pre_hook(lambda m, args: seen.setdefault("read", args[0].detach()))
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6)
    _step(model, MixSpec(2.0, (k,)), seed=5).loss(x, y)
    rng = RunRandom(5, CPU)
    lam = float(np.float32(rng.numpy.beta(2.0, 2.0)))
    index = torch.from_numpy(rng.numpy.permutation(6))
    h = x if k == 0 else seen["point"]
    torch.testing.assert_close(seen["read"], expect(h * lam + h[index] * (1 - lam)), rtol=0, atol=0)
    assert not torch.allclose(seen["read"], expect(h))  # the reader does not see the unmixed state


def test_gradients_flow_into_the_layers_before_k():
    model = build("preactresnet18", 10, width=4)
    loss = _step(model, MixSpec(2.0, (2,))).loss(torch.randn(6, 3, 32, 32), torch.arange(6))
    loss.backward()
    assert model.conv1.weight.grad.abs().sum() > 0 and model.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_erm_mixes_nothing_and_draws_nothing():
    torch.manual_seed(0)
    model = build("preactresnet18", 10, width=4)
    step = _step(model, None)
    before = step.rng.numpy.get_state()[1].copy()
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6)
    torch.testing.assert_close(step.loss(x, y), bce_softmax(model(x), F.one_hot(y, 10).float()), rtol=0, atol=0)
    assert np.array_equal(step.rng.numpy.get_state()[1], before)


@pytest.mark.parametrize("loss", ["soft_ce", "bce_softmax"])
def test_the_configured_loss_reaches_the_step_train_builds(loss, tmp_path):
    cfg = validate_train(
        compose_train(
            "dataset=synthetic",
            "dataset.train_size=20",
            "dataset.test_size=10",
            "model.width=4",
            "method=erm",
            f"train.loss={loss}",
            "device=cpu",
        )
    )
    rng = RunRandom(0, CPU)
    trainer = build_trainer([Job(cfg, tmp_path, {})], [rng], World(), CPU).trainer
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    logits = trainer.model(x)
    expected = {"soft_ce": soft_ce, "bce_softmax": bce_softmax}[loss](logits, F.one_hot(y, 10).float())
    other = {"soft_ce": bce_softmax, "bce_softmax": soft_ce}[loss](logits, F.one_hot(y, 10).float())
    got = trainer.step.loss(x, y)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(got, other)
