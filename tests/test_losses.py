"""The losses against their formulas and against the official code's expression."""

from __future__ import annotations

import torch

from mm_repro.losses import bce_softmax, soft_ce


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
