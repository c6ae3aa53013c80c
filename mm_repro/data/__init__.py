"""Data: dataset files read into uint8 arrays and checked (`data.datasets`), and batches on the device
(`data.loader`)."""

from mm_repro.data.datasets import (
    Arrays,
    cap_per_class,
    ensure_files,
    fingerprint,
    load_arrays,
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
    "load_arrays",
    "make_synthetic",
    "random_split",
    "read_cifar",
    "read_svhn",
]
