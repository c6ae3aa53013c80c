"""Tiny-ImageNet-200 read from its real layout (JPEGs, wnids.txt, val_annotations.txt), cached, checked; the official
stride-2 PreActResNet18 (outputs recorded from the official code: tests/data/official/record.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_WNIDS, compose_train, write_tiny_imagenet
from PIL import Image

from mm_repro.config import DatasetConfig
from mm_repro.data import load_arrays
from mm_repro.data import tiny_imagenet as tin
from mm_repro.errors import UserError
from mm_repro.models import build, build_from
from mm_repro.training.checks import validate_train

OFFICIAL = Path(__file__).parent / "data" / "official"


def _cfg(root: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="tiny_imagenet", root=str(root), download=False, num_classes=3, crop_padding=4, **kw)


def test_the_distributed_layout_reads_in_sorted_wnid_order_with_grey_images_as_rgb(tmp_path):
    write_tiny_imagenet(tmp_path)
    train, test = load_arrays(_cfg(tmp_path))
    assert train.images.shape == (18, 3, 64, 64) and train.images.dtype == torch.uint8
    assert test.images.shape == (9, 3, 64, 64)
    assert train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6  # classes in sorted-wnid order, as ImageFolder
    assert test.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    first = sorted(TINY_WNIDS)[0]
    with Image.open(tmp_path / "tiny-imagenet-200" / "train" / first / "images" / f"{first}_0.JPEG") as grey:
        assert grey.mode == "L"
        expected = np.asarray(grey.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(train.images[0].numpy(), expected)  # as PIL's convert("RGB"): three equal channels


def test_both_validation_layouts_give_the_same_arrays(tmp_path):
    a = load_arrays(_cfg(write_tiny_imagenet(tmp_path / "a")))[1]
    b = load_arrays(_cfg(write_tiny_imagenet(tmp_path / "b", sorted_val=True)))[1]
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    moved = tmp_path / "b" / "tiny-imagenet-200" / "val" / "images"
    assert not list(moved.glob("*.JPEG")) and len(list(moved.glob("*/*.JPEG"))) == 9


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    write_tiny_imagenet(tmp_path)
    train, _ = load_arrays(_cfg(tmp_path))
    cache = tmp_path / "tiny-imagenet-200" / tin.CACHE
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.npz")) == ["train", "val"]
    decoded = []
    real = tin._decode
    monkeypatch.setattr(tin, "_decode", lambda p: decoded.append(p) or real(p))
    again, _ = load_arrays(_cfg(tmp_path))
    assert decoded == [] and torch.equal(again.images, train.images)  # no JPEG decoded the second time
    # One training image replaced by another of a different size on disk: the train split is decoded again.
    wnid = sorted(TINY_WNIDS)[1]
    path = tmp_path / "tiny-imagenet-200" / "train" / wnid / "images" / f"{wnid}_2.JPEG"
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(path, "JPEG", quality=50)
    changed, _ = load_arrays(_cfg(tmp_path))
    assert len(decoded) == 18  # the train split only; val's cache still fits its files
    assert (changed.images[8] != train.images[8]).any() and torch.equal(changed.images[:8], train.images[:8])
    assert len(list(cache.glob("train-*.npz"))) == 1  # the stale cache is gone


def test_a_truncated_jpeg_is_refused_by_name(tmp_path):
    write_tiny_imagenet(tmp_path)
    wnid = sorted(TINY_WNIDS)[2]
    bad = tmp_path / "tiny-imagenet-200" / "train" / wnid / "images" / f"{wnid}_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(UserError, match=f"{bad}.*not a readable JPEG"):
        load_arrays(_cfg(tmp_path))
    assert not list((tmp_path / "tiny-imagenet-200").rglob("*.npz.*"))  # no half-written cache left


def test_a_wrong_image_size_and_an_unknown_validation_class_are_refused(tmp_path):
    write_tiny_imagenet(tmp_path)
    folder = tmp_path / "tiny-imagenet-200"
    notes = folder / "val" / "val_annotations.txt"
    notes.write_text(notes.read_text().replace(sorted(TINY_WNIDS)[0], "n00000000", 1))
    with pytest.raises(UserError, match="val_annotations.txt line 1.*names no class"):
        load_arrays(_cfg(tmp_path))
    write_tiny_imagenet(tmp_path / "b")
    odd = tmp_path / "b" / "tiny-imagenet-200" / "val" / "images" / "val_0.JPEG"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(odd, "JPEG")
    with pytest.raises(UserError, match=f"{odd} is 32 x 32 pixels"):
        load_arrays(_cfg(tmp_path / "b"))


def test_offline_the_error_names_the_archive_its_md5_and_where_it_goes(tmp_path, monkeypatch):
    import urllib.error

    from torchvision.datasets import utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    root = tmp_path / "nothing"
    with pytest.raises(UserError) as info:
        load_arrays(DatasetConfig(name="tiny_imagenet", root=str(root), num_classes=200, download=True))
    message = str(info.value)
    assert tin.ARCHIVE in message and tin.MD5 in message and str(root.resolve()) in message
    assert "\n" not in message and not root.exists()


def test_the_dataset_config_is_the_official_protocol():
    run = validate_train(compose_train("dataset=tiny_imagenet"))
    d = run.dataset
    assert (d.num_classes, d.crop_padding, d.flip, d.mean, d.std) == (200, 4, True, [0.5] * 3, [0.5] * 3)
    assert run.model.stem_stride == 2  # taken from the dataset, as the official code passes stride=2
    assert validate_train(compose_train("dataset=cifar10")).model.stem_stride == 1
    assert validate_train(compose_train("dataset=tiny_imagenet", "model.stem_stride=1")).model.stem_stride == 1
    with pytest.raises(UserError, match=r"model.stem_stride=0: .* must be >= 1"):
        validate_train(compose_train("dataset=tiny_imagenet", "model.stem_stride=0"))


def _official():
    return json.loads((OFFICIAL / "preresnet18_stride2.json").read_text())


def test_the_stride_2_model_equals_the_official_one_weight_for_weight():
    official = _official()["state"]
    torch.manual_seed(0)
    ours = build("preactresnet18", 200, bn_init="ones", stem_stride=2)  # today's BN init, as the recording's torch
    state = ours.state_dict()
    assert list(state) == list(official)  # names, in order
    for name, t in state.items():
        summary = official[name]
        assert list(t.shape) == summary["shape"], name
        assert float(t.double().sum()) == pytest.approx(summary["sum"], rel=1e-6, abs=1e-6), name
        assert t.double().flatten()[:4].tolist() == pytest.approx(summary["first"], rel=1e-6, abs=1e-7), name
    assert ours.conv1.stride == (2, 2)


def test_the_stride_2_model_equals_the_official_one_output_for_output():
    from data.official.record import fill, fixed_input

    recorded = _official()
    model = build_from(validate_train(compose_train("dataset=tiny_imagenet")).model, 200, (3, 64, 64))
    fill(model, 1)
    x = fixed_input((2, 3, 64, 64), 2)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), torch.tensor(recorded["eval_logits"]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.train()(x), torch.tensor(recorded["train_logits"]), rtol=1e-4, atol=1e-5)
    other = build("preactresnet18", 200)  # stride 1 on a 64 x 64 input pools an 8 x 8 map: not the official model
    fill(other, 1)
    with pytest.raises(RuntimeError):
        other.eval()(x)


WNIDS_200 = [f"n0{i:07d}" for i in range(200)]  # Tiny-ImageNet's 200 classes (a net of another size is refused)


@pytest.mark.slow
def test_train_runs_end_to_end_on_tiny_imagenet_files(tmp_path):
    from conftest import TINY, run_cli

    root = write_tiny_imagenet(tmp_path / "data", per_class=1, val_per_class=1, wnids=WNIDS_200)
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        "dataset=tiny_imagenet",
        f"dataset.root={root}",
        "dataset.download=false",
        "dataset.classes=[0,1,2]",  # a net of Tiny-ImageNet's 200 outputs, trained and tested on three of them
        *TINY,
        "train.batch_size=6",
        "train.epochs=2",
        "train.milestones=[1]",
        "method=manifold",
        "method.alpha=0.2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": str(min(2, os.cpu_count() or 1))},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert result["setup"]["model.stem_stride"] == 2 and result["data"]["test"].startswith("3 images")
    assert "test_top5_error" in result["final"]  # 200 outputs: top-5 is reported


def test_data_on_read_only_storage_caches_under_mm_cache_dir(tmp_path, monkeypatch):
    write_tiny_imagenet(tmp_path / "shared")
    first = load_arrays(_cfg(tmp_path / "shared"))[0]
    shutil.rmtree(tmp_path / "shared" / "tiny-imagenet-200" / tin.CACHE)
    real = tin.atomic_write

    def read_only_beside_the_data(path, data):  # as a read-only mount answers (root ignores mode bits)
        if tin.CACHE in str(path):
            raise OSError(30, "Read-only file system", str(path))
        return real(path, data)

    monkeypatch.setattr(tin, "atomic_write", read_only_beside_the_data)
    monkeypatch.setenv("MM_CACHE_DIR", str(tmp_path / "cache"))
    train, _ = load_arrays(_cfg(tmp_path / "shared"))
    assert torch.equal(train.images, first.images)
    (held,) = (tmp_path / "cache").glob("tiny-imagenet-200-*")
    assert sorted(p.name.split("-")[0] for p in held.glob("*.npz")) == ["train", "val"]
    decoded = []
    monkeypatch.setattr(tin, "_decode", lambda p: decoded.append(p))
    load_arrays(_cfg(tmp_path / "shared"))
    assert decoded == []  # read back from $MM_CACHE_DIR


def test_validation_images_in_both_layouts_are_counted_once(tmp_path):
    # copied, not moved, into val/images/<wnid>/: each image is one test image still (its class folder's)
    root = write_tiny_imagenet(tmp_path)
    images = root / "tiny-imagenet-200" / "val" / "images"
    annotations = dict(line.split("\t")[:2] for line in (images.parent / "val_annotations.txt").read_text().split("\n")
                       if line)  # fmt: skip
    for path in list(images.glob("*.JPEG")):
        (images / annotations[path.name]).mkdir(exist_ok=True)
        shutil.copy(path, images / annotations[path.name] / path.name)
    _, test = load_arrays(_cfg(root))
    assert len(test.labels) == 9 and test.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3


def test_two_training_images_swapped_between_classes_are_never_served_from_a_stale_cache(tmp_path):
    # the same size and name lengths: a key of names, sizes and classes could not tell; the files' contents can
    root = write_tiny_imagenet(tmp_path)
    first, second = sorted(TINY_WNIDS)[:2]
    a = root / "tiny-imagenet-200" / "train" / first / "images" / f"{first}_1.JPEG"
    b = root / "tiny-imagenet-200" / "train" / second / "images" / f"{second}_1.JPEG"
    for path, value in ((a, 20), (b, 230)):
        Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(path, "JPEG", quality=90)
    assert a.stat().st_size == b.stat().st_size
    before, _ = load_arrays(_cfg(root))
    swap = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(swap)
    after, _ = load_arrays(_cfg(root))
    assert torch.equal(after.images[1], before.images[7]) and torch.equal(after.images[7], before.images[1])
    assert after.labels.tolist() == before.labels.tolist()  # each image under its new folder's label
