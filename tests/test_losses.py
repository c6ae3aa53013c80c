"""The losses against their formulas and against the official code's expression."""

from __future__ import annotations

import pytest
import torch

from mm_repro.method.losses import bce_softmax, soft_ce


def test_bce_softmax_is_the_official_bceloss_on_softmax_mean_over_n_times_c():
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    y = torch.softmax(torch.randn(5, 4), 1)
    p = torch.softmax(logits, 1)
    formula = -(y * p.log() + (1 - y) * (1 - p).log()).sum() / (5 * 4)
    torch.testing.assert_close(bce_softmax(logits, y), formula)
    torch.testing.assert_close(bce_softmax(logits, y), torch.nn.BCELoss()(torch.nn.Softmax(dim=1)(logits), y))


def test_soft_ce_equals_zhangs_lam_weighted_cross_entropies():
    torch.manual_seed(1)
    logits = torch.randn(6, 3)
    a, b = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([2, 2, 1, 1, 0, 0])
    lam = 0.7
    y = lam * torch.nn.functional.one_hot(a, 3).float() + (1 - lam) * torch.nn.functional.one_hot(b, 3).float()
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(soft_ce(logits, y), lam * ce(logits, a) + (1 - lam) * ce(logits, b))
    torch.testing.assert_close(soft_ce(logits, y), -(y * torch.log_softmax(logits, 1)).sum(1).mean())


def test_losses_run_in_fp32_for_half_precision_logits():
    logits = torch.randn(4, 10).to(torch.bfloat16)
    y = torch.nn.functional.one_hot(torch.arange(4), 10).float()
    assert bce_softmax(logits, y).dtype == torch.float32
    assert soft_ce(logits, y).dtype == torch.float32


def test_bce_softmax_is_bit_for_bit_the_official_value_and_gradient_for_finite_logits():
    torch.manual_seed(2)
    logits = torch.randn(100, 10, requires_grad=True)
    y = torch.softmax(torch.randn(100, 10), 1)
    ours = bce_softmax(logits, y)
    (g_ours,) = torch.autograd.grad(ours, logits)
    official = torch.nn.BCELoss()(torch.nn.Softmax(dim=1)(logits), y)
    (g_official,) = torch.autograd.grad(official, logits)
    assert torch.equal(ours, official) and torch.equal(g_ours, g_official)


def test_non_finite_logits_give_a_nan_loss_not_an_assert():
    # F.binary_cross_entropy rejects a NaN input (a device-side assert on CUDA); a diverged run must instead reach
    # its epoch's end, where the training loop stops it cleanly.
    y = torch.nn.functional.one_hot(torch.arange(4), 10).float()
    for bad in (float("nan"), float("inf")):
        logits = torch.randn(4, 10)
        logits[1, 3] = bad
        assert torch.isnan(bce_softmax(logits, y))
        assert torch.isnan(soft_ce(logits, y))
    with pytest.raises(RuntimeError):  # what the official expression does with the same input
        torch.nn.functional.binary_cross_entropy(torch.softmax(logits, 1), y)
