"""Build what a pack of jobs trains with: each run's model (initial weights from its own seed), the data loaders,
the optimizer, and the trainer: `SingleTrainer` for one run, `PackedTrainer` for several. Everything
here can fail on bad input (a oneDNN-unsafe layout, say), so it runs before any run directory is taken over."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mm_repro.config import TrainRunConfig
from mm_repro.data import DeviceLoader, Splits, fingerprint
from mm_repro.data import load_splits as data_splits
from mm_repro.errors import UserError
from mm_repro.method import METHODS
from mm_repro.method.losses import LOSSES
from mm_repro.method.mixing import MixSpec
from mm_repro.method.points import check_points
from mm_repro.models import build_from
from mm_repro.training import distributed
from mm_repro.training.devices import refuse_onednn_bug, uses_channels_last
from mm_repro.training.optim import build_optimizer
from mm_repro.training.randomness import RunRandom, init_model
from mm_repro.training.scoring import Evaluator
from mm_repro.training.step import MixedForward, TrainStep, compile_module
from mm_repro.training.trainers import Trainer
from mm_repro.training.trainers.packed import PackedTrainer
from mm_repro.training.trainers.single import SingleTrainer


def mix_spec(cfg: TrainRunConfig) -> MixSpec | None:
    """The run's interpolation (alpha, eligible points, pairing) when its method interpolates (mixup, manifold mixup),
    else None (ERM, cutout, CutMix: method.base.Method)."""
    m = cfg.method
    return MixSpec(m.alpha, tuple(m.layers), m.pairing) if METHODS[m.name].interpolates else None


def batch_transform(cfg: TrainRunConfig) -> Callable | None:
    """What the run's method does to an input batch and its targets (cutout, CutMix), bound to its settings."""
    transform = METHODS[cfg.method.name].transform
    return None if transform is None else (lambda x, targets, rng: transform(x, targets, cfg.method, rng))


def load_splits(jobs: list[Any]) -> dict[Path, Splits]:
    """Each job's splits, loaded once per distinct dataset (a per-class cap and a validation split draw with the run's
    seed, so such runs of other seeds hold other subsets)."""
    loaded: dict[str, Splits] = {}
    out = {}
    for job in jobs:
        d = job.cfg.dataset
        key = json.dumps([asdict(d), job.cfg.seed if d.per_class_cap or d.valid_per_class else None], sort_keys=True)
        if key not in loaded:
            loaded[key] = data_splits(d, job.cfg.seed)
        out[job.run_dir] = loaded[key]
    return out


def check_fits(model: nn.Module, cfg: TrainRunConfig, image_shape: tuple[int, ...]) -> None:
    """One forward of two blank images of the dataset's shape (eval mode, no gradient: nothing of the model changes),
    so that a model that cannot take the data (a stem stride larger than the image, a fully-connected net of another
    input size, one input channel against three) is one line before any run directory is touched."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *image_shape))
    except RuntimeError as exc:
        m = cfg.model
        raise UserError(
            f"model={m.name} (width {m.width}, stem_stride {m.stem_stride}) cannot take the {cfg.dataset.name} images "
            f"of shape {tuple(image_shape)} ({str(exc).strip().splitlines()[0][:120]}); choose a model that fits them"
        ) from None
    finally:
        model.train()


def build_model(cfg: TrainRunConfig, device: torch.device, image_shape: tuple[int, ...]) -> nn.Module:
    """The run's model on `device`, initial weights from its seed, checked against the data's image shape, in
    channels_last where chosen."""
    c = cfg
    model = init_model(lambda: build_from(c.model, c.dataset.num_classes, image_shape), c.seed)
    if METHODS[c.method.name].interpolates:
        try:
            check_points(model, c.method.layers)  # module names exist (a staged model's numbers too)
        except UserError as exc:
            raise UserError(f"method.layers={list(c.method.layers)}: {exc}") from None
    check_fits(model, cfg, image_shape)
    channels_last = uses_channels_last(c.train.channels_last, device, model)
    refuse_onednn_bug(
        model, c.model.width, device, channels_last, c.train.compile and c.train.compile_backend == "inductor"
    )
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def in_channels_last(model: nn.Module) -> bool:
    """Does the model compute in channels_last (its first convolution's layout)? A net without one never does."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv is not None and conv.weight.is_contiguous(memory_format=torch.channels_last)


def optimizer_for(params: Any, cfg: TrainRunConfig, device: torch.device) -> torch.optim.Optimizer:
    t = cfg.train
    fused = device.type == "cuda" if t.fused is None else t.fused
    return build_optimizer(params, t.lr, t.momentum, t.weight_decay, t.nesterov, fused, t.optimizer)


def compiler(cfg: TrainRunConfig, points: int) -> Any:
    """A function that compiles a module as the run asks (or None when it does not)."""
    t = cfg.train
    if not t.compile:
        return None
    return lambda module: compile_module(module, points, t.compile_mode, t.compile_backend)


def single_trainer(cfg: TrainRunConfig, model: nn.Module, rng: RunRandom, world: distributed.World) -> SingleTrainer:
    device = rng.device
    optimizer = optimizer_for(model.parameters(), cfg, device)
    net: nn.Module = MixedForward(model, cfg.method.block_gradient)
    if world.distributed:
        # A gradient-blocked step leaves the layers before k without a gradient, and each rank draws its own k: DDP
        # must then find the unused parameters at every step (its default would stop at the second step).
        net = DistributedDataParallel(
            net,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.method.block_gradient,
        )
    spec = mix_spec(cfg)
    compile_fn = compiler(cfg, len(spec.layers) if spec else 1)
    step = TrainStep(
        compile_fn(net) if compile_fn else net,
        optimizer,
        LOSSES[cfg.train.loss],
        cfg.dataset.num_classes,
        spec,
        cfg.train.precision,
        rng,
        batch_transform(cfg),
    )
    return SingleTrainer(model, optimizer, step, Evaluator(model, cfg.train.precision, compiler(cfg, 1)))


def packed_trainer(cfgs: list[TrainRunConfig], models: list[nn.Module], rngs: list[RunRandom]) -> Trainer:
    """Several runs as one (training.trainers.packed); they share the loss, classes, precision and optimizer settings
    (the packed launcher groups them so), each with its own mixing method and streams."""
    lead, device = cfgs[0], rngs[0].device
    return PackedTrainer(
        models,
        [mix_spec(c) for c in cfgs],
        rngs,
        LOSSES[lead.train.loss],
        lead.dataset.num_classes,
        lead.train.precision,
        lambda params: optimizer_for(params, lead, device),
    )


@dataclass
class Built:
    """What a session trains with: the trainer, each run's train loader, the evaluation loaders ("test", and "valid"
    when the runs hold a validation split out: the launcher never packs those, so it is one run's), and each run's
    data fingerprints (result.json's `data`)."""

    trainer: Trainer
    loaders: list[DeviceLoader]
    eval_loaders: dict[str, DeviceLoader]
    data: list[dict]


def build_trainer(jobs: list[Any], rngs: list[RunRandom], world: distributed.World, device: torch.device) -> Built:
    """Everything a session of `jobs` trains with (Built), from their configs and streams."""
    splits = load_splits(jobs)
    prints: dict[int, str] = {}
    for s in splits.values():
        for split in (s.train, s.test, s.valid):
            if split is not None and id(split) not in prints:
                prints[id(split)] = fingerprint(split)
    data = []
    for j in jobs:
        s = splits[j.run_dir]
        data.append({"train": prints[id(s.train)], "test": prints[id(s.test)]})
        if s.valid is not None:
            data[-1]["valid"] = prints[id(s.valid)]
    lead = jobs[0].cfg
    local_batch = lead.train.batch_size // world.size
    models = [build_model(job.cfg, device, tuple(splits[job.run_dir].train.images.shape[1:])) for job in jobs]
    channels_last = in_channels_last(models[0])  # the layout chosen
    by_split: dict[int, DeviceLoader] = {}
    loaders = []
    for job in jobs:
        train_split = splits[job.run_dir].train
        if id(train_split) not in by_split:
            by_split[id(train_split)] = DeviceLoader(
                train_split, job.cfg.dataset, local_batch, device, True, channels_last
            )
        loaders.append(by_split[id(train_split)])
    lead_splits = splits[jobs[0].run_dir]
    evaluation = {"test": lead_splits.test, "valid": lead_splits.valid}
    eval_loaders = {
        name: DeviceLoader(split, lead.dataset, lead.train.eval_batch_size, device, False, channels_last)
        for name, split in evaluation.items()
        if split is not None
    }
    if len(jobs) == 1:
        trainer: Trainer = single_trainer(lead, models[0], rngs[0], world)
    else:
        trainer = packed_trainer([job.cfg for job in jobs], models, rngs)
    return Built(trainer, loaders, eval_loaders, data)
