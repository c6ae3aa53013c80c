"""Mixing semantics: one lam and one pairing for hidden states and targets, k uniform over S, lam ~ Beta(a, a),
gradients flowing into the layers before k, ERM mixing nothing."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

from mm_repro import mixing
from mm_repro.config import validate_train
from mm_repro.losses import bce_softmax
from mm_repro.models import build
from mm_repro.train import Stepper
from tests.conftest import compose_train


def test_hidden_states_and_targets_share_lam_and_pairing():
    torch.manual_seed(0)
    h = torch.randn(8, 4, 5, 5)
    y = torch.arange(8) % 3
    targets = torch.nn.functional.one_hot(y, 3).float()
    index = torch.randperm(8)
    lam = 0.3
    h_mixed, t_mixed = mixing.mix(h, targets, lam, index)
    torch.testing.assert_close(h_mixed, lam * h + (1 - lam) * h[index])
    for i in range(8):  # each soft target puts lam on its own class and 1 - lam on its partner's
        expected = torch.zeros(3)
        expected[y[i]] += lam
        expected[y[index[i]]] += 1 - lam
        torch.testing.assert_close(t_mixed[i], expected)
    torch.testing.assert_close(t_mixed.sum(1), torch.ones(8))


def test_draw_order_and_flip_pairing():
    np.random.seed(3)
    random.seed(3)
    d = mixing.draw([0, 1, 2], 2.0, 6, "flip", torch.device("cpu"))
    np.random.seed(3)
    random.seed(3)
    assert d.lam == float(np.float32(np.random.beta(2.0, 2.0)))  # numpy draws lam first, as the official code
    assert d.k == [0, 1, 2][random.randrange(3)]
    assert d.index.tolist() == [5, 4, 3, 2, 1, 0]
    perm = mixing.draw([0], 1.0, 50, "permutation", torch.device("cpu")).index
    assert sorted(perm.tolist()) == list(range(50)) and perm.tolist() != list(range(50))


def test_layer_frequencies_are_uniform_over_the_eligible_set():
    random.seed(0)
    np.random.seed(0)
    counts = Counter(mixing.draw([0, 1, 2], 2.0, 2, "flip", torch.device("cpu")).k for _ in range(6000))
    assert set(counts) == {0, 1, 2}
    assert stats.chisquare([counts[k] for k in (0, 1, 2)]).pvalue > 1e-3


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_lam_follows_beta_alpha_alpha(alpha):
    np.random.seed(1)
    lams = [mixing.draw([0], alpha, 2, "flip", torch.device("cpu")).lam for _ in range(4000)]
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    assert stats.kstest(lams, stats.beta(alpha + 1.5, alpha + 1.5).cdf).pvalue < 1e-3


def _stepper(*overrides):
    cfg = validate_train(compose_train("dataset=synthetic", "model.width=4", *overrides))
    torch.manual_seed(0)
    model = build(cfg.model.name, 10, width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return Stepper(model, opt, cfg, torch.device("cpu")), model


def test_erm_mixes_nothing():
    stepper, model = _stepper("method=erm")
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6)
    expected = bce_softmax(model(x), torch.nn.functional.one_hot(y, 10).float())
    torch.testing.assert_close(stepper.loss(x, y), expected)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_manifold_step_mixes_at_k_with_gradients_into_the_layers_before_k(k):
    stepper, model = _stepper("method=manifold", f"method.layers=[{k}]")
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6)
    np.random.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    loss = stepper.loss(x, y)
    np.random.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    d = mixing.draw([k], 2.0, 6, "permutation", torch.device("cpu"))
    h, t = mixing.mix(model.forward_until(x, k), torch.nn.functional.one_hot(y, 10).float(), d.lam, d.index)
    torch.testing.assert_close(loss, bce_softmax(model.forward_from(h, k), t))
    loss.backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
