"""What `bench` can time, checked before it runs (one line otherwise)."""

from __future__ import annotations

from mm_repro.config import BenchConfig
from mm_repro.data import image_shape
from mm_repro.errors import UserError
from mm_repro.models import REGISTRY

BENCH_IMAGE = (3, 32, 32)  # bench times random images of CIFAR's shape (data.random_split)
TIMED_METHODS = ("erm", "mixup", "manifold")  # the official pipeline's methods, which the official-style step mirrors


def check_bench(cfg: BenchConfig) -> None:
    """What the bench can time, before anything runs: the paper's CIFAR-shaped models (PreAct, WRN) on random
    3 x 32 x 32 images, ERM and the mixups (the official pipeline's), at least one full batch."""
    if cfg.batch_size > cfg.images:
        raise UserError(
            f"batch_size={cfg.batch_size} is larger than images={cfg.images}: the bench times full batches; raise "
            "images= or lower batch_size="
        )
    if REGISTRY[cfg.model.name].family == "mlp" or image_shape(cfg.dataset) != BENCH_IMAGE:
        raise UserError(
            f"bench times the paper's CIFAR-shaped models (PreAct, WRN) on 3 x 32 x 32 images; model={cfg.model.name} "
            f"on dataset={cfg.dataset.name} is not one: `train` records its speed (metrics.jsonl's img/s)"
        )
    if cfg.method.name not in TIMED_METHODS:
        raise UserError(
            f"bench times {', '.join(TIMED_METHODS)} (the official pipeline's methods); method={cfg.method.name} is "
            "timed by `train` (metrics.jsonl's img/s)"
        )
