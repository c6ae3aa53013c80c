"""Loading all three datasets from files in the real formats; clear errors for missing or damaged files; the
on-device crop and flip against torchvision's reference transforms."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from mm_repro.config import DatasetConfig
from mm_repro.data import Arrays, DeviceLoader, cap_per_class, crop_flip, load_arrays, make_synthetic
from mm_repro.errors import UserError
from tests.conftest import write_cifar, write_svhn


def test_cifar10_from_python_batches(cifar10_root):
    train, test = load_arrays(DatasetConfig(name="cifar10", root=str(cifar10_root), download=False))
    assert train.images.shape == (200, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (40, 3, 32, 32)
    with open(cifar10_root / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert torch.equal(train.images[40:80].reshape(40, -1), torch.from_numpy(entry["data"]))
    assert train.labels[40:80].tolist() == entry["labels"]


def test_cifar100_uses_fine_labels(cifar100_root):
    train, test = load_arrays(DatasetConfig(name="cifar100", root=str(cifar100_root), download=False, num_classes=100))
    with open(cifar100_root / "cifar-100-python" / "train", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert train.labels.tolist() == entry["fine_labels"]
    assert len(test.labels) == 100


def test_svhn_from_mat_files_maps_label_10_to_0(svhn_root):
    import scipy.io

    train, test = load_arrays(DatasetConfig(name="svhn", root=str(svhn_root), download=False))
    mat = scipy.io.loadmat(svhn_root / "train_32x32.mat")
    assert train.images.shape == (120, 3, 32, 32) and len(test.labels) == 60
    assert torch.equal(train.images[7], torch.from_numpy(mat["X"][:, :, :, 7]).permute(2, 0, 1))
    assert train.labels.tolist() == (mat["y"].reshape(-1) % 10).tolist()
    assert 10 not in train.labels.tolist()


def test_missing_files_with_downloads_off_name_the_directory_and_files(tmp_path):
    with pytest.raises(UserError, match=r"missing cifar-10-batches-py/data_batch_1.*dataset.download=true"):
        load_arrays(DatasetConfig(name="cifar10", root=str(tmp_path), download=False))
    with pytest.raises(UserError, match="train_32x32.mat"):
        load_arrays(DatasetConfig(name="svhn", root=str(tmp_path), download=False))


def test_truncated_file_is_named(tmp_path):
    root = write_cifar(tmp_path, "cifar10", per_file=4)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="data_batch_3 is truncated or malformed"):
        load_arrays(DatasetConfig(name="cifar10", root=str(root), download=False))


def test_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import mm_repro.data.datasets as data

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data, "download_and_extract_archive", offline)
    root = tmp_path / "data"
    with pytest.raises(UserError) as info:
        load_arrays(DatasetConfig(name="cifar10", root=str(root), download=True))
    message = str(info.value)
    assert f"could not download cifar10 into {root.resolve()}" in message and "cifar-10-batches-py" in message
    assert "dataset.root=DIR" in message and "MM_DATA_DIR" in message
    assert not root.exists()  # no empty data directory left behind


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_device_crop_and_flip_equal_torchvision_transforms_for_the_same_offsets(seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    oy = torch.randint(0, 5, (16,), generator=g)
    ox = torch.randint(0, 5, (16,), generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    padded = torch.nn.functional.pad(images, [2] * 4)
    ours = crop_flip(padded, oy, ox, flips, 32)
    for i in range(16):  # RandomCrop(32, padding=2): zero pad, crop at (top, left); then RandomHorizontalFlip
        ref = TF.crop(TF.pad(images[i], [2], fill=0), int(oy[i]), int(ox[i]), 32, 32)
        if flips[i]:
            ref = TF.hflip(ref)
        assert torch.equal(ours[i], ref)


def test_train_loader_normalises_and_covers_every_image_once(cifar10_root):
    cfg = DatasetConfig(name="cifar10", root=str(cifar10_root), download=False, crop_padding=0, flip=False)
    train, _ = load_arrays(cfg)
    loader = DeviceLoader(train, cfg, 30, torch.device("cpu"), train=True)
    order = loader.order(torch.Generator().manual_seed(0))
    batches = list(loader.batches(order))
    assert len(batches) == len(loader) == 7 and len(batches[-1][1]) == 20
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels, train.labels[order])
    x0 = batches[0][0][0]
    expected = (train.images[order[0]].float() / 255 - torch.tensor(cfg.mean).view(3, 1, 1)) / torch.tensor(
        cfg.std
    ).view(3, 1, 1)
    torch.testing.assert_close(x0, expected)


def test_per_class_cap_and_synthetic_are_deterministic():
    train, test = make_synthetic(10, 300, 50)
    again, _ = make_synthetic(10, 300, 50)
    assert torch.equal(train.images, again.images)
    capped = cap_per_class(train, 7, seed=0)
    assert np.bincount(capped.labels.numpy()).tolist() == [7] * 10
    assert torch.equal(capped.labels, cap_per_class(train, 7, seed=0).labels)


def test_the_run_generator_drives_order_crops_and_flips(cifar10_root):
    cfg = DatasetConfig(name="cifar10", root=str(cifar10_root), download=False)
    train, _ = load_arrays(cfg)
    loader = DeviceLoader(train, cfg, 30, torch.device("cpu"), train=True)

    def epoch(seed):
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(123)  # the global generator plays no part
        return torch.cat([x for x, _ in loader.batches(loader.order(g), 0, g)])

    assert torch.equal(epoch(4), epoch(4)) and not torch.equal(epoch(4), epoch(5))


def test_images_not_stored_as_uint8_are_refused_not_cast(tmp_path):
    root = write_cifar(tmp_path, "cifar10", per_file=4)
    path = root / "cifar-10-batches-py" / "data_batch_2"
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry["data"] = entry["data"].astype(np.float32) / 255
    with open(path, "wb") as f:
        pickle.dump(entry, f)
    with pytest.raises(UserError, match="data_batch_2 is truncated or malformed .*stored as float32, not uint8"):
        load_arrays(DatasetConfig(name="cifar10", root=str(root), download=False))


def test_svhn_images_not_stored_as_uint8_are_refused(tmp_path):
    import scipy.io

    root = write_svhn(tmp_path)
    mat = scipy.io.loadmat(root / "test_32x32.mat")
    scipy.io.savemat(root / "test_32x32.mat", {"X": mat["X"].astype(np.float64), "y": mat["y"]})
    with pytest.raises(UserError, match="test_32x32.mat is truncated or malformed .*float64, not uint8"):
        load_arrays(DatasetConfig(name="svhn", root=str(root), download=False))


@pytest.mark.parametrize("bad", [-1, 10])
def test_labels_outside_the_classes_are_one_clear_error(tmp_path, bad):
    root = write_cifar(tmp_path, "cifar10", per_file=4)
    path = root / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry["labels"][2] = bad
    with open(path, "wb") as f:
        pickle.dump(entry, f)
    with pytest.raises(UserError, match=rf"test split in .*: label {bad} found; labels must lie in 0..9") as info:
        load_arrays(DatasetConfig(name="cifar10", root=str(root), download=False))
    assert "\n" not in str(info.value)


def test_the_official_svhn_cap_keeps_7325_per_class_at_most(svhn_root):
    cfg = DatasetConfig(name="svhn", root=str(svhn_root), download=False, per_class_cap=5)
    train, _ = load_arrays(cfg, seed=0)
    assert np.bincount(train.labels.numpy(), minlength=10).max() == 5


def test_the_loader_pads_each_side_with_crop_padding_zero_pixels():
    # RandomCrop(32, padding=p) with fill 0: a window of a white image shows at most p black rows or columns on a side
    white = Arrays(torch.full((400, 3, 32, 32), 255, dtype=torch.uint8), torch.zeros(400, dtype=torch.int64))
    cfg = DatasetConfig(crop_padding=3, flip=False, mean=[0.0] * 3, std=[1.0] * 3)
    loader = DeviceLoader(white, cfg, 400, torch.device("cpu"), train=True)
    x, _ = loader.batch(loader.order(torch.Generator().manual_seed(0)), 0, torch.Generator().manual_seed(1))
    black = x[:, 0] == 0
    assert set(torch.unique(x).tolist()) == {0.0, 1.0}  # zero fill, the rest untouched
    top = black.all(2).int().argmin(1)  # black rows above the first white one
    left = black.all(1).int().argmin(1)
    assert set(top.tolist()) == set(left.tolist()) == {0, 1, 2, 3}  # every offset 0..2p drawn; width p on top
    assert int(black.all(2).sum(1).max()) == 3 and int(black.all(1).sum(1).max()) == 3  # and p at most in all
