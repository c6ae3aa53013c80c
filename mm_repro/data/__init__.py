"""Data: what a split is (`types`), the datasets one row each (`table`: reader, classes, sizes, image shape; a run's
splits), dataset files read into uint8 arrays and checked (`datasets`: CIFAR/SVHN, the generated set; `mnist`;
`tiny_imagenet`), their download (`download`), and batches on the device (`loader`)."""

from mm_repro.data.datasets import (
    cap_per_class,
    ensure_files,
    hold_out_per_class,
    make_synthetic,
    random_split,
    read_cifar,
    read_svhn,
)
from mm_repro.data.loader import DeviceLoader, crop_flip
from mm_repro.data.table import DATASETS, DatasetSpec, dataset_of, image_shape, load_arrays, load_splits
from mm_repro.data.types import Arrays, Splits, fingerprint

__all__ = [
    "DATASETS",
    "Arrays",
    "DatasetSpec",
    "dataset_of",
    "image_shape",
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
