"""Composition of every dataset x model x method, the official protocol's values and `protocol=paper`, and the
checks on values that Hydra cannot make."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mm_repro.config import CONF_DIR, RESUME_FREE_KEYS, TrainRunConfig, group_options
from mm_repro.errors import UserError
from mm_repro.models import REGISTRY
from mm_repro.training.checks import validate_train
from tests.conftest import compose_train, run_cli

DATASETS = ["cifar10", "cifar100", "svhn", "synthetic"]
METHODS = ["erm", "mixup", "manifold", "cutmix"]


PAIRS = [(d, m) for m in sorted(REGISTRY) for d in (["mnist"] if m.startswith("mlp") else [*DATASETS, "mnist"])]


@pytest.mark.parametrize(("dataset", "model"), PAIRS)  # the paper's MNIST nets take MNIST's images only
@pytest.mark.parametrize("method", METHODS)
def test_every_dataset_model_method_composes_and_validates(dataset, model, method):
    run = validate_train(compose_train(f"dataset={dataset}", f"model={model}", f"method={method}"))
    assert (run.dataset.name, run.model.name, run.method.name) == (dataset, model, method)
    assert run.dataset.num_classes == (100 if dataset == "cifar100" else 10)
    family = REGISTRY[model].family
    schedules = {"preact": 2000, "wrn": 400, "mlp": 10, "torchvision": 2000, "timm": 2000}  # PreAct's for any model
    assert run.train.epochs == schedules[family]
    milestones = {"wrn": [200, 300], "mlp": []}.get(family, [500, 1000, 1500])
    assert run.train.milestones == milestones
    assert run.train.optimizer == ("adam" if family == "mlp" else "sgd")
    mlp_layer = {"mlp_section3_2": 1, "mlp_figure5": 3, "mlp_appendix_g30_early": 2}.get(model, 4)  # the paper's
    named = ["input", "layer1", "layer2"]  # torchvision's and timm's resnets, by module name
    manifold = [mlp_layer] if family == "mlp" else named if family in ("torchvision", "timm") else [0, 1, 2]
    assert run.method.layers == {"erm": [], "mixup": [0], "manifold": manifold, "cutmix": []}[method]


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
    # exactly the official `[x / 255 for x in [125.3, 123.0, 113.9]]`, not rounded
    assert run.dataset.mean == [x / 255 for x in (125.3, 123.0, 113.9)]
    assert run.dataset.std == [x / 255 for x in (63.0, 62.1, 66.7)]
    c100 = validate_train(compose_train("dataset=cifar100")).dataset
    assert c100.mean == [x / 255 for x in (129.3, 124.1, 112.4)]
    assert c100.std == [x / 255 for x in (68.2, 65.4, 70.4)]
    svhn = validate_train(compose_train("dataset=svhn")).dataset
    # the official README's SVHN runs pass --labels_per_class 7325
    assert (svhn.flip, svhn.crop_padding, svhn.mean, svhn.per_class_cap) == (False, 2, [0.5] * 3, 7325)
    assert validate_train(compose_train("dataset=svhn", "protocol=paper")).dataset.per_class_cap is None
    assert validate_train(compose_train("dataset=svhn", "dataset.per_class_cap=null")).dataset.per_class_cap is None
    assert run.model.bn_init == "uniform"
    assert run.logger.name == "wandb" and run.train.resume


def test_paper_protocol_switches_schedule_and_wrn_layers():
    preact = validate_train(compose_train("protocol=paper"))
    assert (preact.train.epochs, preact.train.milestones, preact.method.layers) == (1200, [400, 800], [0, 1, 2])
    wrn = validate_train(compose_train("protocol=paper", "model=wrn28_10"))
    assert (wrn.train.epochs, wrn.train.milestones, wrn.method.layers) == (400, [200, 300], [0, 1])
    explicit = validate_train(
        compose_train("protocol=paper", "train.epochs=7", "train.milestones=[]", "method.layers=[1]")
    )
    assert (explicit.train.epochs, explicit.method.layers) == (7, [1])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.alpha=0"], r"method.alpha=0.0 must be a finite number > 0"),
        (["method=mixup", "method.alpha=-1"], r"method.alpha=-1.0 must be a finite number > 0"),
        (["method.layers=[0,5]"], r"no mixing point 5; its mixing points are \[0, 1, 2, 3, 4\]"),
        (["model=wrn28_2", "method.layers=[4]"], r"wrn28_2 has no mixing point 4"),
        (["train.batch_size=1"], r"batch_size=1: mixing needs at least 2"),
        (["train.loss=mse"], r"train.loss='mse' is not allowed; choose one of bce_softmax, soft_ce"),
        (["train.lr=abc"], r"train.lr='abc' is of the wrong type: train.lr takes a number"),
        (["method.layers=0"], r"method.layers=0 is of the wrong type: method.layers takes a list of points, e.g."),
        (["train.compile=maybe"], r"train.compile='maybe' is of the wrong type: train.compile takes true or false"),
        (["dataset.per_class_cap=x"], r"dataset.per_class_cap='x' is of the wrong type: .* an integer, or null"),
        (["device=tpu"], r"device='tpu' is not allowed"),
        (["method.layers=[]"], r"method.layers is empty"),
        (["train.lr=nan"], r"train.lr=nan must be a finite number"),
        (["train.lr=inf"], r"train.lr=inf must be a finite number"),
        (["train.momentum=-0.5"], r"train.momentum=-0.5 must be >= 0"),
        (["method.alpha=inf"], r"method.alpha=inf must be a finite number"),
        (["train.epochs=10", "train.milestones=[-3]"], r"milestone -3 is outside 1..9"),
        (["train.epochs=10", "train.milestones=[5,10]"], r"milestone 10 is outside 1..9 \(train.epochs=10\)"),
        (["train.epochs=10"], r"train.milestones=\[500, 1000, 1500\]: milestone 500 is outside 1..9"),
        (["model.bn_init=zeros"], r"model.bn_init='zeros' is not allowed; choose one of uniform, ones"),
        (["train.checkpoint_every=0"], r"train.checkpoint_every=0 must be >= 1"),
        (
            ["method=erm", "method.block_gradient=true"],
            r"block_gradient=true needs a method that mixes hidden states \(method=erm",
        ),
        (["method=cutout", "method.cutout=0"], r"method.cutout=0: the hole's side must be >= 1 pixel"),
        (["dataset.valid_per_class=-1"], r"dataset.valid_per_class=-1 must be >= 0"),
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


def test_each_options_list_is_written_once():
    # group options are the conf/ files; the model registry must offer exactly those
    assert group_options("model") == tuple(sorted(REGISTRY))
    assert set(group_options("method")) == {"erm", "mixup", "manifold", "cutout", "cutmix"}
    assert "synthetic" in group_options("dataset")
    with pytest.raises(
        UserError, match="dataset='imagenet' is not allowed; choose one of cifar10, cifar100, mnist, svhn"
    ):
        validate_train({**OmegaConf.to_container(compose_train()), "dataset": {"name": "imagenet"}})


def test_the_experiment_name_comes_from_hydras_choice_not_a_typed_key():
    for path in (CONF_DIR / "experiment").glob("*.yaml"):
        assert "experiment" not in (OmegaConf.load(path) or {}), path.name
    assert "experiment" not in OmegaConf.load(CONF_DIR / "train.yaml")


def test_keys_left_out_of_the_run_directory_name_are_the_resume_free_ones():
    from hydra import compose, initialize_config_dir

    def dirname(*overrides: str) -> str:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=True).hydra.job.override_dirname

    free = ["device=cpu", "train.compile=true", "logger.mode=online", "dataset.root=/x", "train.checkpoint_every=2"]
    assert {k.split("=")[0] for k in free} <= {*RESUME_FREE_KEYS, "logger.mode"}
    assert dirname("seed=1", *free) == "seed=1"  # the same run directory, whatever the free keys are
    assert dirname("seed=1", "train.lr=0.05") == "seed=1,train.lr=0.05"


def _leaf_keys(schema: type, prefix: str = "") -> list[str]:
    import dataclasses

    keys = []
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            keys += _leaf_keys(f.default_factory, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_train_help_says_what_every_key_means(tmp_path):
    proc = run_cli("train", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    keys = _leaf_keys(TrainRunConfig)
    assert len(keys) > 50
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    for key in keys:
        assert key in lines and len(lines[key].split()) > 2, key  # the key and a few words on it
    assert "dataset: cifar10, cifar100, mnist, svhn, synthetic" in proc.stdout


@pytest.mark.parametrize("experiment", ["table1_cifar100", "table2_svhn", "smoke"])
def test_records_carry_the_experiment_hydra_chose(tmp_path, experiment):
    from hydra import compose, initialize_config_dir

    from mm_repro.sweeps.jobs import job_from_hydra

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        full = compose(config_name="train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    task = OmegaConf.masked_copy(full, [k for k in full if k != "hydra"])
    job = job_from_hydra(task, OmegaConf.masked_copy(full, ["hydra"]), tmp_path, None)
    assert job.cfg.experiment == experiment and job.config["experiment"] == experiment
    assert job.hydra_files["config.yaml"].experiment == experiment


@pytest.mark.parametrize(
    ("command", "typo", "meant"),
    [
        ("train", "method.alfa=1", "method.alpha"),
        ("tables", "runz=x", "runs"),
        ("plan", "trian.epochs=3", "train.epochs"),
    ],
)
def test_a_misspelt_key_names_the_nearest_valid_keys_not_hydras_plus_fix(tmp_path, command, typo, meant):
    proc = run_cli(command, typo, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    key = typo.split("=")[0]
    assert f"{key} is not a key of `{command}`; did you mean {meant}" in proc.stderr
    assert "+" + key not in proc.stderr  # Hydra's advice would add the misspelt key


@pytest.mark.parametrize("command", ["tables", "evaluate", "bench", "spiral", "flattening", "synthetic"])
def test_every_commands_help_lists_each_key_with_a_line_on_it(command):
    from mm_repro.commands import command_help, command_keys

    lines = {line.split()[0]: line for line in command_help(command).splitlines() if line.startswith("  ")}
    for key in command_keys(command):
        assert key in lines and len(lines[key].split()) > 3, key  # the key, a few words and its default


def test_plans_help_names_its_own_key_and_sends_to_trains_for_the_rest():
    from mm_repro.commands import command_help, command_keys

    text = command_help("plan")
    assert "every key of `train` (python -m mm_repro train --help)" in text
    assert "bench-<device>.json" in text and "(default runs/bench)" in text
    assert command_keys("plan") == ["bench", *command_keys("train")]


def test_help_of_a_command_is_printed_without_running_it(tmp_path):
    proc = run_cli("tables", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "include_chance" in proc.stdout and not (tmp_path / "results").exists()


@pytest.mark.parametrize("protocol", ["official", "paper"])
def test_a_datasets_own_protocol_comes_with_the_dataset(protocol):
    # the official README runs Tiny-ImageNet 2000 epochs, x0.1 at 1000 and 1500, alpha 0.2 for both mixups; the
    # paper's Table 3 protocol is the same. Other datasets keep their model family's schedule and the methods' alpha.
    for method in ("mixup", "manifold"):
        tiny = validate_train(compose_train("dataset=tiny_imagenet", f"method={method}", f"protocol={protocol}"))
        assert (tiny.train.epochs, tiny.train.milestones, tiny.method.alpha) == (2000, [1000, 1500], 0.2)
    cifar = validate_train(compose_train("dataset=cifar10", f"protocol={protocol}"))
    assert cifar.method.alpha == 2.0 and cifar.train.epochs == (2000 if protocol == "official" else 1200)
    assert validate_train(compose_train("dataset=cifar10", "method=mixup")).method.alpha == 1.0


def test_the_protocols_tables_are_not_part_of_a_runs_setup():
    from omegaconf import OmegaConf

    from mm_repro.records import setup_of
    from mm_repro.records.checkpoint import config_changes

    new = OmegaConf.to_container(compose_train(), resolve=True)
    old = {**new, "protocol": {k: v for k, v in new["protocol"].items() if k != "datasets"}}  # before the entry
    assert config_changes(old, new) == [] and setup_of(old) == setup_of(new)
    assert "protocol.name" in setup_of(new) and "train.epochs" in setup_of(new)


def test_each_datasets_facts_are_the_ones_its_config_and_files_have():
    from mm_repro.config import EVALUATIONS, FLATTENING_STUDIES, SYNTHETIC_TASKS
    from mm_repro.data import DATASETS
    from mm_repro.evaluation import evaluate
    from mm_repro.experiments import synthetic

    assert set(group_options("dataset")) == set(DATASETS)  # each config file has its row, each row its file
    for name in [n for n in DATASETS if n != "synthetic"]:
        assert validate_train(compose_train(f"dataset={name}")).dataset.num_classes == DATASETS[name].classes, name
    assert tuple(evaluate.EVALUATIONS) == EVALUATIONS and tuple(synthetic.TASKS) == SYNTHETIC_TASKS
    assert FLATTENING_STUDIES == ("section3_2", "figure5", "appendix_g")


def test_a_config_file_alone_adds_no_dataset(monkeypatch):
    # as if conf/dataset/stl10.yaml had been added: refused in one line, never read with another dataset's reader
    from mm_repro.data import load_splits
    from mm_repro.training import checks

    offered = checks.group_options
    monkeypatch.setattr(checks, "group_options", lambda g: (*offered(g), "stl10") if g == "dataset" else offered(g))
    config = OmegaConf.to_container(compose_train("dataset=svhn"))
    config["dataset"]["name"] = "stl10"
    with pytest.raises(UserError, match="dataset='stl10' has no reader in mm_repro/data/"):
        checks.validate_train(config)
    dataset = TrainRunConfig().dataset
    dataset.name = "stl10"
    with pytest.raises(UserError, match="dataset='stl10' has no reader"):
        load_splits(dataset)
