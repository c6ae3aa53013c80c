"""Data: dataset files read into uint8 arrays and checked (`data.datasets`, `data.tiny_imagenet`), and batches on
the device (`data.loader`)."""

from mm_repro.data.datasets import (
    Arrays,
    Splits,
    cap_per_class,
    ensure_files,
    fingerprint,
    hold_out_per_class,
    load_arrays,
    load_splits,
    make_synthetic,
    random_split,
    read_cifar,
    read_svhn,
)
from mm_repro.data.loader import DeviceLoader, crop_flip

__all__ = [
    "Arrays",
    "DeviceLoader",
    "cap_per_class",
    "crop_flip",
    "ensure_files",
    "fingerprint",
    "Splits",
    "hold_out_per_class",
    "load_arrays",
    "load_splits",
    "make_synthetic",
    "random_split",
    "read_cifar",
    "read_svhn",
]
