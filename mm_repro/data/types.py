"""What every dataset reader returns and every reader of a dataset uses: a split's uint8 images and integer labels
(`Arrays`), the splits a run sees (`Splits`) and a split's fingerprint (its size and a hash of its pixels and
labels), which result.json records and a resume or an evaluation compares."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass
class Arrays:
    """One split: images (N, 3, 32, 32) uint8 and labels (N,) int64, on the CPU."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class Splits:
    """The splits a run sees: train (after the validation split and any per-class cap), test, and valid (or None)."""

    train: Arrays
    test: Arrays
    valid: Arrays | None = None


def fingerprint(split: Arrays) -> str:
    """What a split is, to compare: its size and a hash of its pixels and labels (a resume on other data is
    refused; result.json records it)."""
    digest = hashlib.sha256()
    digest.update(str(tuple(split.images.shape)).encode())
    digest.update(split.images.contiguous().numpy())
    digest.update(split.labels.to(torch.int64).contiguous().numpy())
    return f"{len(split.labels)} images, sha256 {digest.hexdigest()[:16]}"
