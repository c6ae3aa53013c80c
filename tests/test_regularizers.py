"""The paper's other regularizers and ablations: cutout as the official code does it (its outputs recorded by
tests/data/official/record.py), dropout, the gradient blocked at the mixing point, the validation split, top-5 error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_train

from mm_repro.config import DatasetConfig
from mm_repro.data import Arrays, hold_out_per_class, load_splits
from mm_repro.errors import UserError
from mm_repro.method.cutout import cutout
from mm_repro.models import build
from mm_repro.training import scoring, step
from mm_repro.training.checks import validate_train

OFFICIAL = Path(__file__).parent / "data" / "official"


def test_cutout_equals_the_official_function_on_the_same_draws():
    from data.official.record import fixed_input

    cases = json.loads((OFFICIAL / "cutout.json").read_text())["cases"]
    streams: dict[int, np.random.RandomState] = {}
    for case in cases:
        rng = streams.setdefault(case["seed"], np.random.RandomState(case["seed"]))  # = np.random.seed(seed)
        x = fixed_input((4, 3, case["size"], case["size"]), 10 * case["seed"] + case["call"])
        out = cutout(x, 16, rng)
        assert (out == 0).all(0).all(0).int().tolist() == case["mask"], case
        assert hashlib.sha256(out.float().numpy().tobytes()).hexdigest() == case["output_sha256"], case
    holes = {(c["seed"], c["call"]): int(np.sum(c["mask"])) for c in cases}
    assert len(set(holes.values())) > 1  # some holes are clipped at the border, some are whole (16 x 16 = 256)


def test_the_cutout_step_cuts_the_normalised_batch_with_the_runs_numpy_stream():
    from mm_repro.training.builders import single_trainer
    from mm_repro.training.distributed import World
    from mm_repro.training.randomness import RunRandom

    cfg = validate_train(compose_train("dataset=synthetic", "method=cutout", "model.width=4", "device=cpu"))
    rng = RunRandom(3, torch.device("cpu"))
    model = build("preactresnet18", 10, width=4)
    trainer = single_trainer(cfg, model, rng, World())
    seen = []
    model.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    twin = np.random.RandomState()
    twin.set_state(rng.numpy.get_state())
    trainer.train_step([x], [y])
    assert torch.equal(seen[0], cutout(x, 16, twin))  # the same hole, from the same stream position
    assert (seen[0] == 0).all(0).all(0).any()  # a hole shared by the whole batch


def test_the_gradient_blocked_at_k_reaches_no_layer_before_k():
    torch.manual_seed(0)
    model = build("preactresnet18", 10, width=4)
    x, targets = torch.randn(6, 3, 32, 32), step.one_hot(torch.arange(6) % 10, 10)
    lam, index = torch.tensor(0.3), torch.randperm(6)
    for block in (False, True):
        model.zero_grad(set_to_none=True)
        logits, mixed = step.MixedForward(model, block_gradient=block)(x, targets, 2, lam, index)
        (logits.log_softmax(1) * mixed).sum().backward()
        before = [p.grad for m in (model.conv1, model.layer1, model.layer2) for p in m.parameters()]
        after = [p.grad for m in (model.layer3, model.layer4, model.linear) for p in m.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in after)
        if block:
            assert all(g is None for g in before)  # the hidden state at k was detached, both members of each pair
        else:
            assert all(g is not None and g.abs().sum() > 0 for g in before)


def test_dropout_acts_before_the_final_linear_layer_in_training_only():
    torch.manual_seed(0)
    model = build("preactresnet18", 10, width=4, dropout=0.5)
    features = []
    model.linear.register_forward_pre_hook(lambda m, args: features.append(args[0].detach().clone()))
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    a, b = model(x), model(x)
    assert torch.equal(a, b)
    model.train()
    model(x)
    dropped = features[-1]
    assert (dropped == 0).float().mean() > 0.2  # about half the pooled features zeroed, the rest scaled by 2
    with pytest.raises(UserError, match=r"model.dropout=1.0 must be a probability in \[0, 1\)"):
        validate_train(compose_train("model.dropout=1.0"))


def test_the_validation_split_is_held_out_of_training_and_drawn_with_the_seed():
    labels = torch.arange(60) % 3
    split = Arrays(torch.arange(60, dtype=torch.uint8).view(60, 1, 1, 1).expand(60, 3, 2, 2).clone(), labels)
    train, valid = hold_out_per_class(split, 4, seed=0)
    assert len(valid.labels) == 12 and len(train.labels) == 48
    assert torch.bincount(valid.labels).tolist() == [4, 4, 4]
    ids_train, ids_valid = set(train.images[:, 0, 0, 0].tolist()), set(valid.images[:, 0, 0, 0].tolist())
    assert not ids_train & ids_valid and len(ids_train | ids_valid) == 60
    _, again = hold_out_per_class(split, 4, seed=0)
    _, other = hold_out_per_class(split, 4, seed=1)
    assert torch.equal(again.images, valid.images) and not torch.equal(other.images, valid.images)
    with pytest.raises(UserError, match="dataset.valid_per_class=20: class 0 has only 20 training images"):
        hold_out_per_class(split, 20, seed=0)


def test_load_splits_holds_out_before_the_cap(cifar10_root):
    cfg = DatasetConfig(name="cifar10", root=str(cifar10_root), download=False, valid_per_class=3, per_class_cap=5)
    s = load_splits(cfg, seed=0)
    assert torch.bincount(s.valid.labels).tolist() == [3] * 10
    assert torch.bincount(s.train.labels, minlength=10).max() <= 5


def test_top5_error_counts_a_label_outside_the_five_largest_logits():
    class Loader:
        labels = torch.tensor([0, 1, 2, 3])
        num_images = 4

        def order(self):
            return torch.arange(4)

        def batches(self, order):
            yield torch.zeros(4), self.labels

    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3]] * 4)  # class 0 first ... class 6 last
    logits[3] = torch.tensor([0.0, 1, 2, -5, 4, 5, 6])  # label 3 is the smallest logit: a top-5 miss
    figures = scoring.test_figures(lambda x: logits[None], Loader(), "fp32", 1)[0]
    assert figures["error"] == 75.0  # only the first is the arg max
    assert figures["top5_error"] == 25.0
    five = scoring.test_figures(lambda x: logits[None, :, :5], Loader(), "fp32", 1)[0]
    assert "top5_error" not in five  # with 5 classes or fewer, top-5 is not recorded


def test_top5_counts_rank_5_as_a_hit_and_rank_6_as_a_miss():
    class Loader:
        labels = torch.tensor([4, 5])
        num_images = 2

        def order(self):
            return torch.arange(2)

        def batches(self, order):
            yield torch.zeros(2), self.labels

    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3]] * 2)  # class i has rank i + 1: label 4 is 5th, label 5 is 6th
    figures = scoring.test_figures(lambda x: logits[None], Loader(), "fp32", 1)[0]
    assert figures["top5_error"] == 50.0  # the 5th is a hit, the 6th a miss
