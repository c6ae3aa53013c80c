"""The method registry (mm_repro.method: one module and one config per method) and CutMix against the reference
implementation's own outputs (clovaai/CutMix-PyTorch at 2d8eb68, recorded by tests/data/official/record_cutmix.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mm_repro.config import CONF_DIR
from mm_repro.errors import UserError
from mm_repro.method import METHODS, method_of
from mm_repro.method.cutmix import cutmix
from mm_repro.training import loop as train_module
from tests.conftest import tiny_job

REFERENCE = Path(__file__).parent / "data" / "official" / "cutmix_reference.pt"


def test_cutmix_gives_the_reference_implementations_batches_and_loss():
    ref = torch.load(REFERENCE, weights_only=True)
    # the reference's streams: its global np.random and torch generator, seeded as the recording seeded them
    rng = SimpleNamespace(numpy=np.random.RandomState(ref["numpy_seed"]), torch=torch.Generator())
    rng.torch.manual_seed(ref["torch_seed"])
    settings = SimpleNamespace(alpha=ref["beta"], cutmix_prob=ref["cutmix_prob"])
    model = nn.Linear(3 * 8 * 10, 5)
    model.weight.data, model.bias.data = ref["weights"]["linear.weight"], ref["weights"]["linear.bias"]
    terms = iter(ref["ce_terms"].tolist())
    mixed_batches = 0
    for x, y, seen in zip(ref["inputs"], ref["labels"], ref["model_inputs"], strict=True):
        targets = F.one_hot(y, 5).float()
        mixed, soft = cutmix(x, targets, settings, rng)
        assert torch.equal(mixed, seen)  # the same pixels: box, partners and the draws that made them
        out = model(mixed.flatten(1))
        if torch.equal(soft, targets):  # a batch the draw left as it was: CE(out, y)
            assert F.cross_entropy(out, y).item() == pytest.approx(next(terms), rel=1e-6)
            continue
        mixed_batches += 1
        ce_a, ce_b = next(terms), next(terms)
        kept = soft[torch.arange(len(y)), y].min().item()  # lam, adjusted to the area kept
        # our loss on soft targets: soft_ce equals the reference's lam CE(out, a) + (1 - lam) CE(out, b)
        assert F.cross_entropy(out, soft).item() == pytest.approx(kept * ce_a + (1 - kept) * ce_b, rel=1e-5)
    assert mixed_batches == 2 and next(terms, None) is None  # the recording mixed 2 of its 8 batches


def test_the_methods_are_the_modules_that_declare_one():
    assert list(METHODS) == ["erm", "cutout", "mixup", "manifold", "cutmix"]
    assert {name for name in METHODS} == {p.stem for p in (CONF_DIR / "method").glob("*.yaml")}
    assert METHODS["cutmix"].mixes == "input" and not METHODS["cutmix"].packable
    assert METHODS["manifold"].interpolates and METHODS["manifold"].row_keys == ("alpha", "layers")


def test_a_config_file_alone_adds_no_method(tmp_path, monkeypatch):
    # as if conf/method/saliencymix.yaml had been added (Hydra would offer it), without a module in mm_repro/method/

    from mm_repro.training import checks

    with pytest.raises(UserError, match="method='saliencymix' has no implementation in mm_repro/method/"):
        method_of("saliencymix")
    offered = checks.group_options
    monkeypatch.setattr(
        checks, "group_options", lambda g: (*offered(g), "saliencymix") if g == "method" else offered(g)
    )
    config = dict(tiny_job(tmp_path / "r", "method=cutmix").config)
    config["method"]["name"] = "saliencymix"
    with pytest.raises(UserError, match="method='saliencymix' has no implementation in mm_repro/method/"):
        checks.validate_train(config)  # refused in one line, never trained as another method


def test_a_cutmix_run_trains_alone_records_its_keys_and_resumes(tmp_path, stop_after, monkeypatch):
    from mm_repro.errors import Preempted
    from mm_repro.records import CHECKPOINT, load_checkpoint
    from mm_repro.sweeps.packed import trains_alone

    job = tiny_job(tmp_path / "unbroken", "method=cutmix", "method.cutmix_prob=1.0")
    assert trains_alone(job.cfg)
    (result,) = train_module.train_jobs([job])
    assert result["run"]["method"] == "cutmix" and result["run"]["cutmix_prob"] == 1.0 and result["run"]["alpha"] == 1.0
    stop_after(3)
    with pytest.raises(Preempted):
        train_module.train_jobs([tiny_job(tmp_path / "broken", "method=cutmix", "method.cutmix_prob=1.0")])
    monkeypatch.undo()
    train_module.train_jobs([tiny_job(tmp_path / "broken", "method=cutmix", "method.cutmix_prob=1.0")])
    a, b = (load_checkpoint(tmp_path / d / CHECKPOINT)["model"] for d in ("unbroken", "broken"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # its box and partners come from the run's saved streams


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method=cutmix", "method.cutmix_prob=1.5"), "method.cutmix_prob=1.5 must be a probability in [0, 1]"),
        (("method=cutmix", "method.layers=[0]"), "method=cutmix mixes no point; method.layers=[0] must be []"),
        (("method=mixup", "method.layers=[1]"), "method=mixup mixes the input only"),
        (("method=cutmix", "method.block_gradient=true"), "block_gradient=true needs a method that mixes hidden"),
    ],
)
def test_a_methods_settings_are_checked_by_what_it_declares(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message.replace("[", "\\[").replace("]", "\\]")):
        tiny_job(tmp_path / "r", *overrides)
