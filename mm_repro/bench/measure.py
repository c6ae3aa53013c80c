"""`python -m mm_repro bench device=cpu|cuda model=... out=DIR`: our training step and epoch against the official
pipeline, and a packed row.

In one process, on the same model, batch and device, after a warm-up at every mixing point (so that no compilation
or CUDA-graph capture is timed), the median images/s over alternating repeats of:
- ours: the training path's own step and evaluation, built by the builders `train` uses from conf/train.yaml (its
  optimizer, loss and classes) and the bench's options, on the device-resident dataset, crop and flip as one copy
  per batch, no host sync inside the loop, optional bf16/fp16, channels_last and torch.compile;
- official-style: a re-implementation of the official pipeline (docs/protocol.md §2): uint8 images as PIL images through
  torchvision's per-sample RandomHorizontalFlip + RandomCrop(32, padding=2) + ToTensor + Normalize in a DataLoader
  with workers, fp32, eager, NCHW, per-step host work as in `main.py` (numpy lam and permutation, CPU one-hot copied
  to the device, `loss.item()` every step), BCE on softmax;
- both data pipelines alone (no model);
- the rest of an epoch: evaluation per image (in the run's precision, compiled when the run is), one checkpoint
  (the stall on the training thread, a copy to host memory, and the background write) and the records; from these,
  `epoch_overhead`: the fraction of a CIFAR-10 epoch's wall time (50,000 training and 10,000 test images) spent
  outside training steps, at the measured speeds, with checkpoints every `checkpoint_seconds` of wall time;
- packed (`pack=K`): the aggregate images/s of K runs trained as one (training.trainers.packed) against one run.
MFU is the model's training FLOPs (3 x forward, conv and linear only) per second over a *measured* peak: the fastest
of large dense matmuls and a large 3x3 convolution on the same device, in the math mode the run's convolutions use
(TF32 for fp32 on CUDA when enabled), or in fp32 if that is faster. The data is random uint8 images of CIFAR's
shape (the speed does not depend on the pixels).
"""

from __future__ import annotations

import platform
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mm_repro import records
from mm_repro.bench.official import official_loader, official_step
from mm_repro.bench.options import BENCH_IMAGE, check_bench
from mm_repro.bench.throughput import cycle, median_rates, peak_for, rate, timed, train_flops_per_image
from mm_repro.config import BenchConfig, TrainRunConfig, compose_train
from mm_repro.console import progress
from mm_repro.data import DATASETS, Arrays, DeviceLoader, random_split
from mm_repro.method import METHODS
from mm_repro.method.losses import LOSSES
from mm_repro.models import build
from mm_repro.records.checkpoint import to_host
from mm_repro.training.builders import build_model, packed_trainer, single_trainer
from mm_repro.training.checks import validate_train
from mm_repro.training.devices import training_device
from mm_repro.training.distributed import World
from mm_repro.training.optim import build_optimizer
from mm_repro.training.randomness import RunRandom, init_model
from mm_repro.training.trainers.packed import PACKABLE_PRECISIONS
from mm_repro.training.trainers.single import SingleTrainer

CIFAR10_TRAIN, CIFAR10_TEST = DATASETS["cifar10"].train, DATASETS["cifar10"].test


def run_config(cfg: BenchConfig, seed: int | None = None) -> TrainRunConfig:
    """The config `train` would run with these options: conf/train.yaml (its optimizer, loss and classes) with the
    bench's model, method, batch, precision and compile options."""
    m, d = cfg.method, cfg.dataset
    overrides = [
        f"dataset={d.name}",
        f"model={cfg.model.name}",
        f"model.width={cfg.model.width}",
        f"model.bn_init={cfg.model.bn_init}",
        f"method={m.name}",
        f"method.alpha={m.alpha}",
        f"method.layers={list(m.layers)}",
        f"method.pairing={m.pairing}",
        f"train.batch_size={cfg.batch_size}",
        f"train.precision={cfg.precision}",
        f"train.compile={cfg.compile}",
        f"train.compile_mode={cfg.compile_mode}",
        f"seed={cfg.seed if seed is None else seed}",
        f"device={cfg.device}",
        "logger=none",
    ]
    return validate_train(compose_train(overrides))


def _ours(cfg: BenchConfig, device: torch.device) -> tuple[nn.Module, SingleTrainer, bool]:
    """Our training step and evaluation, built by the builders `train` uses."""
    run = run_config(cfg)
    model = build_model(run, device, BENCH_IMAGE)
    channels_last = model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    return model, single_trainer(run, model, RunRandom(cfg.seed, device), World()), channels_last


def _official(cfg: BenchConfig, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer, Callable]:
    """The official-style model (same initial weights, NCHW, eager), its plain SGD with the run's settings, and the
    run's loss."""
    run = run_config(cfg)
    m, t = run.model, run.train
    model = init_model(lambda: build(m.name, run.dataset.num_classes, width=m.width, bn_init=m.bn_init), run.seed)
    optimizer = build_optimizer(model.to(device).parameters(), t.lr, t.momentum, t.weight_decay, t.nesterov, False)
    return model, optimizer, LOSSES[t.loss]


def _warm_up(step: Callable, cfg: BenchConfig) -> None:
    """Every mixing point once at least, so that no graph is compiled or captured inside the timed steps."""
    for layers in [(k,) for k in cfg.method.layers] if METHODS[cfg.method.name].interpolates else [None]:
        step(cfg.warmup, layers)


# ---------------------------------------------------------------- the measurements


def measure_steps(cfg: BenchConfig, split: Arrays, device: torch.device) -> dict:
    """Ours against the official-style step, and both data pipelines alone."""
    model, trainer, channels_last = _ours(cfg, device)
    step = trainer.step
    ours_loader = DeviceLoader(split, cfg.dataset, cfg.batch_size, device, True, channels_last)
    full = len(split.labels) // cfg.batch_size * cfg.batch_size  # full batches only: one batch shape is timed
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    ours_batches = cycle(lambda: ours_loader.batches(ours_loader.order(g)[:full], 0, g))

    def ours_steps(n: int, layers: tuple[int, ...] | None = None) -> int:
        for _ in range(n):
            step.step(*ours_batches(), layers)
        return n * cfg.batch_size

    ref_model, ref_opt, loss_fn = _official(cfg, device)
    loader = official_loader(split, cfg.dataset, cfg.batch_size, cfg.workers, device)
    ref_batches = cycle(lambda: loader)
    classes = cfg.dataset.num_classes

    def official_steps(n: int) -> int:
        images = 0
        for _ in range(n):
            x, y = ref_batches()
            official_step(ref_model, ref_opt, x, y, cfg.method, loss_fn, classes)
            images += len(y)  # the official loader keeps an epoch's last, smaller batch
        return images

    _warm_up(ours_steps, cfg)
    official_steps(cfg.warmup)
    settle = 1.0 if cfg.workers else 0.0  # let the official loader's workers finish prefetching before ours is timed
    ours, official = median_rates(
        lambda: ours_steps(cfg.steps), lambda: official_steps(cfg.steps), device, cfg.repeats, settle
    )
    n_batches = min(len(split.labels) // cfg.batch_size, 50)

    def ours_data() -> int:
        order = ours_loader.order(g)
        for i in range(n_batches):
            ours_loader.batch(order, i, g)
        return n_batches * cfg.batch_size

    def official_data() -> int:
        for i, (x, _) in enumerate(loader):
            x.to(device)
            if i + 1 == n_batches:
                break
        return n_batches * cfg.batch_size

    ours_data()
    data_ours, data_official = median_rates(ours_data, official_data, device, cfg.repeats, settle)
    return {
        "model_obj": model,
        "trainer_obj": trainer,
        "ours_images_per_second": ours,
        "official_images_per_second": official,
        "ratio": ours / official,
        "data_ours_images_per_second": data_ours,
        "data_official_images_per_second": data_official,
        "data_ratio": data_ours / data_official,
    }


def measure_epoch_rest(
    cfg: BenchConfig, model: nn.Module, trainer: SingleTrainer, split: Arrays, device: torch.device, step_rate: float
) -> dict:
    """What an epoch spends outside training steps: evaluation, one checkpoint (stall and write), the records."""
    channels_last = model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    test = Arrays(split.images[: cfg.eval_images], split.labels[: cfg.eval_images])
    test_loader = DeviceLoader(test, cfg.dataset, 500, device, False, channels_last)
    evaluate, step = trainer.evaluator, trainer.step
    evaluate(test_loader)  # warm-up (and compilation)
    eval_per_image = timed(lambda: evaluate(test_loader), device, cfg.repeats) / len(test.labels)
    state = {"model": model.state_dict(), "optimizer": step.optimizer.state_dict(), "metrics": []}
    stall = timed(lambda: to_host(state, device), device, cfg.repeats)
    rows = [{"epoch": e, "lr": 0.1, "train_loss": 0.1, "test_error": 5.0, "test_nll": 0.2} for e in range(2000)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / records.CHECKPOINT
        write = timed(lambda: records.save_checkpoint(path, to_host(state, device)), device, 1) - stall
        record = timed(lambda: records.write_metrics(Path(tmp) / records.METRICS, rows), device, cfg.repeats)
    train_s = CIFAR10_TRAIN / step_rate
    eval_s = CIFAR10_TEST * eval_per_image
    epoch_s = train_s + eval_s + record
    checkpoint_share = stall * min(1.0, epoch_s / cfg.checkpoint_seconds) if cfg.checkpoint_seconds else stall
    overhead = (eval_s + record + checkpoint_share) / (epoch_s + checkpoint_share)
    return {
        "eval_seconds_per_image": eval_per_image,
        "checkpoint_stall_seconds": stall,
        "checkpoint_write_seconds": max(write, 0.0),
        "records_seconds": record,
        "epoch_overhead": overhead,
    }


def measure_packed(cfg: BenchConfig, split: Arrays, device: torch.device, single_rate: float) -> dict:
    """Aggregate images/s of `pack` runs trained as one (mm_repro.training.trainers.packed), against one run."""
    k = cfg.pack
    runs = [run_config(cfg, cfg.seed + i) for i in range(k)]
    models = [build_model(run, device, BENCH_IMAGE) for run in runs]
    trainer = packed_trainer(runs, models, [RunRandom(run.seed, device) for run in runs])
    channels_last = models[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    loader = DeviceLoader(split, cfg.dataset, cfg.batch_size, device, True, channels_last)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    order = loader.order(g)
    batches = len(order) // cfg.batch_size

    def packed_steps(n: int) -> int:
        for i in range(n):
            xs, ys = zip(*(loader.batch(order, (i + r) % batches, g) for r in range(k)), strict=True)
            trainer.train_step(list(xs), list(ys))
        return n * k * cfg.batch_size

    packed_steps(cfg.warmup)
    packed = statistics.median(rate(lambda: packed_steps(cfg.steps), device) for _ in range(cfg.repeats))
    return {"pack": k, "packed_images_per_second": packed, "packed_ratio": packed / single_rate}


def run_bench(cfg: BenchConfig) -> dict:
    """Every measurement; returns what bench-<device>.json holds."""
    check_bench(cfg)
    with training_device(cfg.device, in_sweep=False) as device:
        torch.backends.cudnn.benchmark = True
        np.random.seed(cfg.seed)  # the official-style step draws from the global streams, as the official code
        split = random_split(cfg.images, cfg.seed)
        phases = ["train steps, ours and official-style", "the rest of an epoch", "a packed row", "FLOPs and peak"]
        bar = progress(total=len(phases), desc="bench", unit="phase")
        bar.set_postfix_str(phases[0])
        steps = measure_steps(cfg, split, device)
        model, trainer = steps.pop("model_obj"), steps.pop("trainer_obj")
        bar.update(1)
        bar.set_postfix_str(phases[1])
        rest = measure_epoch_rest(cfg, model, trainer, split, device, steps["ours_images_per_second"])
        bar.update(1)
        bar.set_postfix_str(phases[2])
        if cfg.pack > 1 and cfg.precision not in PACKABLE_PRECISIONS:  # said, not timed: packs train fp32 only
            packed = {"pack_skipped": f"{cfg.precision} runs are not packed (packs train in fp32 only)"}
        else:
            packed = measure_packed(cfg, split, device, steps["ours_images_per_second"]) if cfg.pack > 1 else {}
        bar.update(1)
        bar.set_postfix_str(phases[3])
        flops = train_flops_per_image(model, device)
        peak, peak_mode = peak_for(device, cfg.precision)
        bar.update(1)
        bar.close()
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {
        "device": cfg.device,
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
        "model": cfg.model.name,
        "width": cfg.model.width,
        "method": cfg.method.name,
        "pairing": cfg.method.pairing,
        "batch_size": cfg.batch_size,
        "precision": cfg.precision,
        "compile": cfg.compile,
        "compile_mode": cfg.compile_mode if cfg.compile else None,
        "workers": cfg.workers,
        "steps": cfg.steps,
        "repeats": cfg.repeats,
        **steps,
        **rest,
        **packed,
        "train_flops_per_image": flops,
        "measured_peak_flops": peak,
        "measured_peak_mode": peak_mode,
        "mfu_ours": steps["ours_images_per_second"] * flops / peak,
        "mfu_official": steps["official_images_per_second"] * flops / peak,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
