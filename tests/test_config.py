"""Composition of every dataset x model x method, the official protocol's values and `protocol=paper`, and the
checks on values that Hydra cannot make."""

from __future__ import annotations

import pytest

from mm_repro.config import validate_train
from mm_repro.errors import UserError
from mm_repro.models import REGISTRY
from tests.conftest import compose_train

DATASETS = ["cifar10", "cifar100", "svhn", "synthetic"]
METHODS = ["erm", "mixup", "manifold"]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model", sorted(REGISTRY))
@pytest.mark.parametrize("method", METHODS)
def test_every_dataset_model_method_composes_and_validates(dataset, model, method):
    run = validate_train(compose_train(f"dataset={dataset}", f"model={model}", f"method={method}"))
    assert (run.dataset.name, run.model.name, run.method.name) == (dataset, model, method)
    assert run.dataset.num_classes == (100 if dataset == "cifar100" else 10)
    preact = model.startswith("preact")
    assert run.train.epochs == (2000 if preact else 400)
    assert run.train.milestones == ([500, 1000, 1500] if preact else [200, 300])
    assert run.method.layers == {"erm": [], "mixup": [0], "manifold": [0, 1, 2]}[method]


def test_defaults_are_the_official_protocol():
    run = validate_train(compose_train())
    assert (run.dataset.name, run.model.name, run.method.name, run.protocol.name) == (
        "cifar10",
        "preactresnet18",
        "manifold",
        "official",
    )
    t = run.train
    assert (t.lr, t.momentum, t.nesterov, t.weight_decay, t.batch_size, t.gamma, t.loss) == (
        0.1,
        0.9,
        True,
        1e-4,
        100,
        0.1,
        "bce_softmax",
    )
    assert run.method.alpha == 2.0
    assert validate_train(compose_train("method=mixup")).method.alpha == 1.0
    assert run.dataset.crop_padding == 2 and run.dataset.flip
    assert run.dataset.mean == pytest.approx([125.3 / 255, 123.0 / 255, 113.9 / 255], abs=1e-5)
    assert run.dataset.std == pytest.approx([63.0 / 255, 62.1 / 255, 66.7 / 255], abs=1e-5)
    c100 = validate_train(compose_train("dataset=cifar100")).dataset
    assert c100.mean == pytest.approx([129.3 / 255, 124.1 / 255, 112.4 / 255], abs=1e-5)
    assert c100.std == pytest.approx([68.2 / 255, 65.4 / 255, 70.4 / 255], abs=1e-5)
    svhn = validate_train(compose_train("dataset=svhn")).dataset
    assert (svhn.flip, svhn.crop_padding, svhn.mean, svhn.per_class_cap) == (False, 2, [0.5] * 3, None)
    assert run.logger.name == "wandb" and run.train.resume


def test_paper_protocol_switches_schedule_and_wrn_layers():
    preact = validate_train(compose_train("protocol=paper"))
    assert (preact.train.epochs, preact.train.milestones, preact.method.layers) == (1200, [400, 800], [0, 1, 2])
    wrn = validate_train(compose_train("protocol=paper", "model=wrn28_10"))
    assert (wrn.train.epochs, wrn.train.milestones, wrn.method.layers) == (400, [200, 300], [0, 1])
    explicit = validate_train(compose_train("protocol=paper", "train.epochs=7", "method.layers=[1]"))
    assert (explicit.train.epochs, explicit.method.layers) == (7, [1])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.alpha=0"], r"method.alpha=0.0 must be > 0"),
        (["method=mixup", "method.alpha=-1"], r"method.alpha=-1.0 must be > 0"),
        (["method.layers=[0,5]"], r"no mixing point 5; its mixing points are \[0, 1, 2, 3, 4\]"),
        (["model=wrn28_2", "method.layers=[4]"], r"wrn28_2 has no mixing point 4"),
        (["train.batch_size=1"], r"batch_size=1: mixing needs at least 2"),
        (["train.loss=mse"], r"train.loss='mse' is not allowed; choose one of bce_softmax, soft_ce"),
        (["train.lr=abc"], r"train.lr: Value 'abc'"),
        (["device=tpu"], r"device='tpu' is not allowed"),
        (["method.layers=[]"], r"method.layers is empty"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(UserError, match=message) as info:
        validate_train(compose_train(*overrides))
    assert "\n" not in str(info.value)


def test_unknown_key_is_an_error():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose_train())
    cfg["train"]["lrr"] = 0.1  # what a typo'd key in an experiment YAML file becomes
    with pytest.raises(UserError, match="config key train.lrr: Key 'lrr' not in 'TrainConfig'"):
        validate_train(cfg)


def test_erm_accepts_any_batch_size_and_no_alpha():
    run = validate_train(compose_train("method=erm", "train.batch_size=1"))
    assert run.method.alpha == 0.0
