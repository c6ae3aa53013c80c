"""Mixing points by module name on any nn.Module (method.points, through a forward hook): the same step as the staged
points on mm_repro's PreActResNet-18, the mix where the hook says on torchvision's resnet18 as it comes, on a timm
model and on one's own nn.Sequential; every misuse of the API's ManifoldMixup one line."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from mm_repro import api
from mm_repro.errors import UserError
from mm_repro.models import build
from mm_repro.training.randomness import init_model


def _batch(seed: int = 0, shape=(3, 32, 32)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, *shape, generator=g), torch.randint(0, 10, (8,), generator=g)


@pytest.mark.parametrize(("names", "ints"), [(["layer1", "layer2"], [1, 2]), (["input", "layer1"], [0, 1])])
def test_on_preactresnet18_the_names_give_bitwise_the_step_of_the_points(names, ints):
    x, y = _batch()
    steps = []
    for layers in (names, ints):
        model = init_model(lambda: build("preactresnet18", 10, width=8), 0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        mixup = api.ManifoldMixup(alpha=2.0, layers=layers, num_classes=10, seed=3)
        draws = []
        for _ in range(3):  # three steps: k, lam and the pairing from the same streams, the same update
            loss, draw = mixup.loss(model, x, y, return_draw=True)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            draws.append((layers.index(draw["k"]), draw["lam"], draw["index"].tolist()))
        steps.append((draws, model.state_dict()))
    (draws_a, a), (draws_b, b) = steps
    assert draws_a == draws_b
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchvisions_resnet18_as_it_comes_is_mixed_where_the_hook_says():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x, y = _batch()
    seen = {}
    model.layer2.register_forward_pre_hook(lambda m, args: seen.setdefault("into layer2", args[0]))
    mixup = api.ManifoldMixup(alpha=1.0, layers=["layer1"], num_classes=10, seed=0)
    loss, draw = mixup.loss(model, x, y, return_draw=True)
    with torch.no_grad():
        h = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
    lam, index = draw["lam"], draw["index"]
    torch.testing.assert_close(seen["into layer2"], h * lam + h[index] * (1 - lam))  # the official expression
    loss.backward()
    assert model.conv1.weight.grad.abs().sum() > 0  # the gradient reaches the layers before the point


def test_a_timm_model_and_a_users_sequential_train_with_named_points():
    timm = pytest.importorskip("timm")
    x, y = _batch()
    for model, layers in (
        (timm.create_model("resnet18", num_classes=10, pretrained=False), ["input", "layer1", "layer3"]),
        (nn.Sequential(nn.Flatten(), nn.Linear(3072, 32), nn.ReLU(), nn.Linear(32, 10)), ["input", "1", "2"]),
    ):
        mixup = api.ManifoldMixup(alpha=2.0, layers=layers, num_classes=10, seed=0)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(len(layers) * 2):
            loss = mixup.loss(model, x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert torch.isfinite(loss) and any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0}, "alpha=0 must be a number > 0"),
        ({"alpha": 5e-324}, "alpha=5e-324 must be a number > 0"),
        ({"loss": "ce"}, "loss='ce' is not a loss; choose one of bce_softmax, soft_ce"),
        ({"layers": "layer1"}, "layers='layer1' must be a list of points"),
        ({"layers": ["layer1", "layer1"]}, "lists layer1 twice"),
        ({"layers": ["layer9"]}, "mixing point 'layer9' is not a module of ResNet; its points include input, conv1"),
        ({"layers": [1]}, "mixing point 1 is not a point of ResNet; name a module instead"),
        ({"num_classes": 0}, "num_classes=0 must be an integer >= 2"),
        ({"seed": -1}, "seed=-1 must be an integer in 0.."),
    ],
)
def test_every_misuse_of_the_mixing_step_is_one_line(kwargs, message):
    model = torchvision.models.resnet18(num_classes=10)
    x, y = _batch()
    settings = {"alpha": 2.0, "layers": ["layer1"], "num_classes": 10, **kwargs}
    with pytest.raises(UserError) as info:
        api.ManifoldMixup(**settings).loss(model, x, y)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("layers", [[9], [3], [-1]])
def test_a_staged_models_point_it_lacks_is_refused_never_wrapped_round(layers):
    model = api.Staged(nn.Flatten(), nn.Linear(3072, 16), nn.Linear(16, 10))  # points 0, 1, 2
    x, y = _batch()
    with pytest.raises(UserError, match=f"mixing point {layers[0]} is not a point of Staged; its points are"):
        api.ManifoldMixup(2.0, layers, 10).loss(model, x, y)


def test_labels_out_of_range_are_one_line():
    with pytest.raises(UserError, match="y must hold one label in 0..9"):
        api.ManifoldMixup(2.0, ["input"], 10).loss(torchvision.models.resnet18(num_classes=10), *_batch()[:1],
                                                    torch.full((8,), 12))  # fmt: skip


def test_a_module_that_runs_twice_in_one_forward_is_not_a_point():
    shared = nn.Linear(8, 8)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared, self.head = shared, nn.Linear(8, 10)

        def forward(self, x):
            return self.head(self.shared(self.shared(x)))

    with pytest.raises(UserError, match="'shared' ran twice in one forward"):
        api.ManifoldMixup(2.0, ["shared"], 10).loss(Twice(), torch.randn(4, 8), torch.arange(4))


@pytest.mark.slow  # four CLI runs of a torchvision resnet18 on 200 MNIST-format images: ~2 min
def test_a_torchvision_model_trains_resumes_evaluates_and_tabulates_from_the_command_line(tmp_path):
    import json

    from tests.conftest import data_args, popen_cli, run_cli, wait_for, write_mnist

    root = write_mnist(tmp_path / "data", n_train=200, n_test=60)
    args = ["train", *data_args(root, "mnist"), "model=torchvision", "model.arch=resnet18", "train.epochs=3",
            "train.milestones=[]", "train.batch_size=20", "train.checkpoint_seconds=0", "logger=none",
            "deterministic=true"]  # fmt: skip
    unbroken = run_cli(*args, f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["run"]["arch"] == "resnet18" and result["run"]["layers"] == ["input", "layer1", "layer2"]
    proc = popen_cli([*args, f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    wait_for(lambda: (tmp_path / "b" / "metrics.jsonl").exists(), proc, "epoch 1")
    proc.send_signal(__import__("signal").SIGTERM)
    proc.communicate(timeout=120)
    resumed = run_cli(*args, f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-2000:]
    from mm_repro.records import CHECKPOINT, load_checkpoint

    a, b = (load_checkpoint(tmp_path / d / CHECKPOINT)["model"] for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed to where the unbroken run ends
    evaluated = run_cli("evaluate", f"run={tmp_path / 'a'}", cwd=tmp_path)
    assert evaluated.returncode == 0 and "flattening at klayer1" in evaluated.stdout, evaluated.stderr[-2000:]
    tabled = run_cli("tables", f"runs={tmp_path}", f"out={tmp_path / 't'}", "include_chance=true", cwd=tmp_path)
    assert tabled.returncode == 0 and "arch=resnet18" in (tmp_path / "t" / "summary.md").read_text()


@pytest.mark.slow  # a timm resnet18 (11 M parameters) trained for an epoch on 100 generated images
def test_a_timm_model_trains_as_a_run_where_timm_is_installed(tmp_path):
    pytest.importorskip("timm")
    from mm_repro.training.loop import train_jobs
    from tests.conftest import tiny_job

    job = tiny_job(tmp_path / "r", "model=timm", "model.arch=resnet18", "train.epochs=1", "model.width=0")
    (result,) = train_jobs([job])
    assert result["run"]["arch"] == "resnet18" and result["run"]["layers"] == ["input", "layer1", "layer2"]
    model, _ = api.load_model(tmp_path / "r")
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
