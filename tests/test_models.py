"""The models are the official code's, weight for weight: parameter counts (docs/protocol.md §2), tensor names and
shapes,
and a functional re-implementation of the official forward built from docs/protocol.md §2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mm_repro.errors import UserError
from mm_repro.models import NAMED_FAMILIES, REGISTRY, build, count_parameters, mixing_points

# docs/protocol.md §2: counted from the official code.
OFFICIAL_PARAMS = {
    "preactresnet18": (11_171_146, 11_217_316),
    "preactresnet34": (21_279_306, 21_325_476),
    "preactresnet50": (23_509_066, 23_693_476),
    "preactresnet101": (42_501_194, 42_685_604),
    "preactresnet152": (58_144_842, 58_329_252),
    "wrn28_10": (36_489_290, 36_546_980),
    "wrn28_2": (1_469_642, 1_481_252),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
@pytest.mark.parametrize("classes", [10, 100])
def test_parameter_counts_equal_the_official_code(name, classes):
    expected = OFFICIAL_PARAMS[name][0 if classes == 10 else 1]
    assert count_parameters(build(name, classes)) == expected


@pytest.mark.parametrize("name", sorted(n for n, spec in REGISTRY.items() if spec.family not in NAMED_FAMILIES))
def test_forward_until_then_from_equals_forward_for_every_mixing_point(name):
    torch.manual_seed(0)
    model = build(name, 10, width=4).eval()
    x = torch.randn(3, 3, 32, 32)
    full = model(x)
    assert full.shape == (3, 10)
    widths = len(model.widths) if REGISTRY[name].family == "mlp" else None  # the fully-connected nets: one per layer
    assert (
        tuple(model.mixing_points)
        == mixing_points(name)
        == {"preact": (0, 1, 2, 3, 4), "wrn": (0, 1, 2, 3), "mlp": tuple(range((widths or 0) + 1))}[
            REGISTRY[name].family
        ]
    )
    for k in model.mixing_points:
        torch.testing.assert_close(model.forward_from(model.forward_until(x, k), k), full, rtol=0, atol=0)
    assert torch.equal(model.forward_until(x, 0), x)


def test_preact_layout_has_no_bn_after_the_stem_and_none_before_pooling():
    model = build("preactresnet18", 10)
    assert [n for n, _ in model.named_children()] == ["conv1", "layer1", "layer2", "layer3", "layer4", "linear"]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 3, 3)
    assert shapes["layer1.0.bn1.weight"] == (64,)  # the first BN is the first block's pre-activation
    assert shapes["layer2.0.shortcut.0.weight"] == (128, 64, 1, 1)
    assert "layer1.0.shortcut.0.weight" not in shapes
    assert shapes["linear.weight"] == (10, 512)
    assert not any(k.startswith("bn") for k in shapes)


def test_wrn_layout_biases_stride_on_second_conv_and_final_bn_momentum():
    model = build("wrn28_10", 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert model.bn1.momentum == 0.9
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [4, 4, 4]
    assert model.linear.in_features == 640


def _eval_bn(model):
    """Eval-mode BatchNorm by its state_dict prefix, written with F.batch_norm."""
    p, bufs = dict(model.named_parameters()), dict(model.named_buffers())

    def bn(prefix, h):
        return F.batch_norm(
            h,
            bufs[f"{prefix}.running_mean"],
            bufs[f"{prefix}.running_var"],
            p[f"{prefix}.weight"],
            p[f"{prefix}.bias"],
            False,
            0.0,
            1e-5,
        )

    return bn


def _official_preact_forward(model, x):
    """Official PreActResNet forward, written from docs/protocol.md §2: stem conv (no BN-ReLU), pre-activation basic
    blocks
    whose 1x1 shortcut sees the pre-activated input, no final BN-ReLU, avg_pool2d(4), linear."""
    p = dict(model.named_parameters())
    bn = _eval_bn(model)

    h = F.conv2d(x, p["conv1.weight"], padding=1)
    for stage, stride in zip(range(1, 5), (1, 2, 2, 2)):
        for b in range(2):
            pre = f"layer{stage}.{b}"
            s = stride if b == 0 else 1
            out = F.relu(bn(f"{pre}.bn1", h))
            short = F.conv2d(out, p[f"{pre}.shortcut.0.weight"], stride=s) if f"{pre}.shortcut.0.weight" in p else h
            out = F.conv2d(out, p[f"{pre}.conv1.weight"], stride=s, padding=1)
            out = F.conv2d(F.relu(bn(f"{pre}.bn2", out)), p[f"{pre}.conv2.weight"], padding=1)
            h = out + short
    h = F.avg_pool2d(h, 4).flatten(1)
    return F.linear(h, p["linear.weight"], p["linear.bias"])


def _official_wrn_forward(model, x):
    """Official WRN forward from docs/protocol.md §2: biased convs, stride on the 2nd conv, shortcut on the raw input,
    final BN-ReLU, avg_pool2d(8), linear."""
    p = dict(model.named_parameters())
    bn = _eval_bn(model)

    h = F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1)
    for stage, stride in zip(range(1, 4), (1, 2, 2)):
        for b in range(4):
            pre = f"layer{stage}.{b}"
            s = stride if b == 0 else 1
            out = F.conv2d(F.relu(bn(f"{pre}.bn1", h)), p[f"{pre}.conv1.weight"], p[f"{pre}.conv1.bias"], padding=1)
            out = F.conv2d(
                F.relu(bn(f"{pre}.bn2", out)), p[f"{pre}.conv2.weight"], p[f"{pre}.conv2.bias"], stride=s, padding=1
            )
            key = f"{pre}.shortcut.0"
            short = F.conv2d(h, p[f"{key}.weight"], p[f"{key}.bias"], stride=s) if f"{key}.weight" in p else h
            h = out + short
    h = F.avg_pool2d(F.relu(bn("bn1", h)), 8).flatten(1)
    return F.linear(h, p["linear.weight"], p["linear.bias"])


@pytest.mark.parametrize(
    ("name", "reference"), [("preactresnet18", _official_preact_forward), ("wrn28_2", _official_wrn_forward)]
)
def test_forward_equals_the_official_architecture_written_independently(name, reference):
    torch.manual_seed(1)
    model = build(name, 10, width=8 if name.startswith("preact") else 4).eval()
    for m in model.modules():  # non-trivial BN statistics, so that a missing or extra BN shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), reference(model, x), rtol=1e-4, atol=1e-5)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UserError, match="model='resnet9' is not a model; choose one of preactresnet18"):
        build("resnet9", 10)


@pytest.mark.parametrize("name", ["preactresnet18", "preactresnet50", "wrn28_2"])
def test_batchnorm_weights_start_uniform_by_default_as_in_the_official_codes_pytorch(name):
    # PyTorch <= 1.1 drew BN weights from U(0, 1) (the official code's era); today's PyTorch starts them at 1.
    torch.manual_seed(0)
    bns = [m for m in build(name, 10, width=8).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    weights = torch.cat([m.weight.detach() for m in bns])
    assert weights.min() >= 0 and weights.max() < 1 and weights.std() > 0.2  # U(0, 1): std 0.289
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)
    ones = [m for m in build(name, 10, width=8, bn_init="ones").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in ones)


def test_uniform_bn_init_draws_in_construction_order_as_torch_1_0():
    # torch 1.0 drew each BN weight in its constructor: the stem conv (built before any BN) is the same under both
    # inits, and the first block's conv1 (built after bn1) differs, because bn1's draw came first.
    torch.manual_seed(3)
    uniform = build("preactresnet18", 10, width=8)
    torch.manual_seed(3)
    ones = build("preactresnet18", 10, width=8, bn_init="ones")
    assert torch.equal(uniform.conv1.weight, ones.conv1.weight)
    assert not torch.equal(uniform.layer1[0].conv1.weight, ones.layer1[0].conv1.weight)
    torch.manual_seed(3)
    torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)  # the stem
    assert torch.equal(uniform.layer1[0].bn1.weight, torch.rand(8))  # nn.init.uniform_ is torch.rand's stream
