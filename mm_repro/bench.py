"""`python -m mm_repro bench device=cpu|cuda model=... out=DIR`: our training step against the official pipeline.

In one process, on the same model, batch and device, after warm-up, the median images/s over repeats of:
- ours: the dataset resident on the device, crop and flip as one gather per batch, no host sync inside the loop,
  optional bf16/fp16 autocast, channels_last and torch.compile on CUDA (`mm_repro.train.Stepper`);
- official-style: a re-implementation of the official code's pipeline (paper.md 2): uint8 images as PIL images
  through torchvision's per-sample RandomHorizontalFlip + RandomCrop(32, padding=2) + ToTensor + Normalize in a
  DataLoader with workers, fp32, eager, NCHW, per-step host work as in `main.py` (numpy lam and permutation, CPU
  one-hot copied to the device, `loss.item()` every step), BCE on softmax;
- both data pipelines alone (no model).
MFU is the model's training FLOPs (3 x forward, conv and linear only) per second over a *measured* peak: the
throughput of a large dense matmul on the same device, in fp32 or the run's dtype, whichever is faster, timed in
this process. The data is random uint8 images of CIFAR's shape (the speed does not depend on the pixels).
"""

from __future__ import annotations

import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mm_repro.config import DatasetConfig, MethodConfig, ModelConfig, TrainConfig, TrainRunConfig
from mm_repro.data import Arrays, DeviceLoader
from mm_repro.losses import bce_softmax
from mm_repro.models import build
from mm_repro.train import Stepper, build_model_and_optimizer, pick_device, uses_channels_last

CIFAR_MEAN = [0.49137, 0.48235, 0.44667]
CIFAR_STD = [0.24706, 0.24353, 0.26157]


@dataclass
class BenchConfig:
    device: str = "cpu"
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    protocol: dict = field(default_factory=dict)
    out: str = "results/bench"
    batch_size: int = 100
    precision: str = "fp32"
    compile: bool = False
    compile_mode: str = "default"
    images: int = 5000
    warmup: int = 3
    steps: int = 10
    repeats: int = 3
    workers: int = 2
    seed: int = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(run_once: Callable[[], int], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    n = run_once()
    _sync(device)
    return n / (time.perf_counter() - start)


def _median_rates(
    a: Callable[[], int], b: Callable[[], int], device: torch.device, repeats: int
) -> tuple[float, float]:
    """Median images/s of a and of b, measured alternately (a, b, a, b, ...) so that drift hits both alike."""
    rates_a, rates_b = [], []
    for _ in range(repeats):
        rates_a.append(_rate(a, device))
        rates_b.append(_rate(b, device))
    return statistics.median(rates_a), statistics.median(rates_b)


def train_flops_per_image(model: nn.Module, device: torch.device) -> float:
    """3 x the forward FLOPs (2 x MACs) of the convolutions and linear layers for one 32x32 image."""
    macs = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs += output.numel() * k
        else:
            macs += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32, device=device))
    model.train(was_training)
    for h in handles:
        h.remove()
    return 3 * 2 * macs


def measured_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large dense matmul in `dtype` on `device`: the ceiling MFU is measured against."""
    n = 8192 if device.type == "cuda" else 1536
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    reps = 20 if device.type == "cuda" else 3
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


class _PILDataset(torch.utils.data.Dataset):
    """uint8 images served as PIL images through a per-sample transform, as torchvision's CIFAR10 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def official_loader(split: Arrays, batch_size: int, workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    """The official `load_data_subset` pipeline for CIFAR: per-sample PIL transforms in DataLoader workers."""
    import torchvision.transforms as T

    transform = T.Compose(
        [T.RandomHorizontalFlip(), T.RandomCrop(32, padding=2), T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    )
    dataset = _PILDataset(split.images.permute(0, 2, 3, 1).numpy(), split.labels.numpy(), transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
    )


def official_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    method: MethodConfig,
    num_classes: int,
    device: torch.device,
) -> float:
    """One step as the official `main.py` + `preresnet.py` take it, host work included."""
    x, y = x.to(device), y.to(device)
    onehot = torch.zeros(len(y), num_classes).scatter_(1, y.cpu()[:, None], 1).to(device)  # official to_one_hot
    if method.name == "erm":
        logits, targets = model(x), onehot
    else:
        lam = np.random.beta(method.alpha, method.alpha)
        lam = torch.from_numpy(np.array([lam]).astype("float32")).to(device)
        k = method.layers[random.randint(0, len(method.layers) - 1)]
        indices = torch.from_numpy(np.random.permutation(len(y))).to(device)
        h = model.forward_until(x, k)
        h, targets = h * lam + h[indices] * (1 - lam), onehot * lam + onehot[indices] * (1 - lam)
        logits = model.forward_from(h, k)
    loss = bce_softmax(logits, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()  # the official loop reads the loss every step (AverageMeter)


def _cycle(iterable_factory: Callable) -> Callable[[], tuple]:
    state = {"it": iter(iterable_factory())}

    def next_batch() -> tuple:
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(iterable_factory())
            return next(state["it"])

    return next_batch


def run_bench(cfg: BenchConfig) -> dict:
    """Measure both pipelines; returns what bench-<device>.json holds."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    torch.backends.cudnn.benchmark = True
    g = torch.Generator().manual_seed(cfg.seed)
    split = Arrays(
        torch.randint(0, 256, (cfg.images, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (cfg.images,), generator=g),
    )
    dataset_cfg = DatasetConfig(name="cifar10", mean=CIFAR_MEAN, std=CIFAR_STD)
    run_cfg = TrainRunConfig(
        dataset=dataset_cfg,
        model=cfg.model,
        method=cfg.method,
        train=TrainConfig(
            batch_size=cfg.batch_size, precision=cfg.precision, compile=cfg.compile, compile_mode=cfg.compile_mode
        ),
    )

    # ours: the training path itself (the official SGD settings are TrainConfig's defaults)
    model, optimizer = build_model_and_optimizer(run_cfg, device)
    stepper = Stepper(model, optimizer, run_cfg, device)
    ours_loader = DeviceLoader(split, dataset_cfg, cfg.batch_size, device, True, uses_channels_last(run_cfg, device))
    full_batches = len(split.labels) // cfg.batch_size * cfg.batch_size  # one batch shape: no extra graph timed
    ours_batches = _cycle(lambda: ours_loader.batches(ours_loader.order()[:full_batches]))

    def ours_steps(n: int, layers: list[int] | None = None) -> int:
        for _ in range(n):
            x, y = ours_batches()
            stepper.step(x, y, layers)
        return n * cfg.batch_size

    # official-style, on an identically built model
    ref_model = build(cfg.model.name, 10, width=cfg.model.width).to(device)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    ref_model.train()
    loader = official_loader(split, cfg.batch_size, cfg.workers, device)
    ref_batches = _cycle(lambda: loader)

    def official_steps(n: int) -> int:
        for _ in range(n):
            x, y = ref_batches()
            official_step(ref_model, ref_opt, x, y, cfg.method, 10, device)
        return n * cfg.batch_size

    # Warm up every mixing point, so that no compilation or CUDA-graph capture falls inside the timed steps.
    for layers in [[k] for k in cfg.method.layers] if cfg.method.name != "erm" else [None]:
        ours_steps(cfg.warmup, layers)
    official_steps(cfg.warmup)
    ours, official = _median_rates(
        lambda: ours_steps(cfg.steps), lambda: official_steps(cfg.steps), device, cfg.repeats
    )

    # data pipelines alone: one pass over min(images, 20 batches)
    n_batches = min(len(split.labels) // cfg.batch_size, 20)

    def ours_data() -> int:
        for i, _batch in enumerate(ours_loader.batches(ours_loader.order())):
            if i + 1 == n_batches:
                break
        return n_batches * cfg.batch_size

    def official_data() -> int:
        for i, (x, _) in enumerate(loader):
            x.to(device)
            if i + 1 == n_batches:
                break
        return n_batches * cfg.batch_size

    ours_data()
    data_ours, data_official = _median_rates(ours_data, official_data, device, cfg.repeats)

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision, torch.float32)
    flops = train_flops_per_image(model, device)
    # The ceiling is the faster of fp32 and the run's dtype: a CPU without native bf16 runs bf16 matmuls slower than
    # fp32, and measuring against that would report an MFU above 100 %.
    peaks = {
        str(d).removeprefix("torch."): measured_peak_flops(device, d) for d in dict.fromkeys([torch.float32, dtype])
    }
    peak_dtype = max(peaks, key=peaks.__getitem__)
    peak = peaks[peak_dtype]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {
        "device": cfg.device,
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
        "model": cfg.model.name,
        "width": cfg.model.width,
        "method": cfg.method.name,
        "batch_size": cfg.batch_size,
        "precision": cfg.precision,
        "compile": cfg.compile,
        "compile_mode": cfg.compile_mode if cfg.compile else None,
        "workers": cfg.workers,
        "steps": cfg.steps,
        "repeats": cfg.repeats,
        "ours_images_per_second": ours,
        "official_images_per_second": official,
        "ratio": ours / official,
        "data_ours_images_per_second": data_ours,
        "data_official_images_per_second": data_official,
        "data_ratio": data_ours / data_official,
        "train_flops_per_image": flops,
        "measured_peak_flops": peak,
        "measured_peak_dtype": peak_dtype,
        "mfu_ours": ours * flops / peak,
        "mfu_official": official * flops / peak,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }


def report(r: dict) -> str:
    lines = [
        f"mm_repro bench: {r['model']} (width {r['width']}) {r['method']}, batch {r['batch_size']}, {r['device']} "
        f"({r['device_name']}), ours {r['precision']}{' compiled' if r['compile'] else ''}; official-style fp32 "
        f"with {r['workers']} loader workers",
        f"{'':32}{'images/s':>12}{'ratio':>9}{'MFU':>8}",
        f"{'ours: train step':32}{r['ours_images_per_second']:>12.1f}{r['ratio']:>8.2f}x{100 * r['mfu_ours']:>7.1f}%",
        f"{'official-style: train step':32}{r['official_images_per_second']:>12.1f}{'':>9}"
        f"{100 * r['mfu_official']:>7.1f}%",
        f"{'ours: data pipeline':32}{r['data_ours_images_per_second']:>12.0f}{r['data_ratio']:>8.1f}x",
        f"{'official-style: data pipeline':32}{r['data_official_images_per_second']:>12.0f}",
        f"train FLOPs/image {r['train_flops_per_image'] / 1e9:.3f} G; measured matmul peak "
        f"{r['measured_peak_flops'] / 1e12:.3f} TFLOP/s ({r['measured_peak_dtype']}); torch {r['torch_version']}",
    ]
    return "\n".join(lines)


def main(cfg: BenchConfig) -> dict:
    from mm_repro.records import write_json

    result = run_bench(cfg)
    out = Path(cfg.out)
    write_json(out / f"bench-{cfg.device}.json", result)
    print(report(result))
    print(f"written: {out / f'bench-{cfg.device}.json'}")
    return result
