"""How fast: timings that wait for the device, training FLOPs per image, and the measured ceiling MFU is taken
against (`bench`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mm_repro.training.devices import sync
from mm_repro.training.step import PRECISION_DTYPES


def rate(run_once: Callable[[], int], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    n = run_once()
    sync(device)
    return n / (time.perf_counter() - start)


def median_rates(
    a: Callable[[], int], b: Callable[[], int], device: torch.device, repeats: int, settle: float = 0.0
) -> tuple[float, float]:
    """Median images/s of a and of b, measured alternately (a, b, a, b, ...) so that drift hits both alike. `settle`
    seconds pass before each timing of a: b's DataLoader workers go on prefetching after b's pass, and on a small
    machine they would compete with a (docs/benchmarks.md)."""
    rates_a, rates_b = [], []
    for _ in range(repeats):
        time.sleep(settle)
        rates_a.append(rate(a, device))
        rates_b.append(rate(b, device))
    return statistics.median(rates_a), statistics.median(rates_b)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, best: bool = False) -> float:
    """Seconds `fn` takes, waiting for the device: the median over `repeats` (the fastest with `best`)."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times) if best else statistics.median(times)


def cycle(iterable_factory: Callable) -> Callable[[], tuple]:
    state = {"it": iter(iterable_factory())}

    def next_batch() -> tuple:
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(iterable_factory())
            return next(state["it"])

    return next_batch


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


def measured_peak_flops(device: torch.device, dtype: torch.dtype, tf32: bool = False) -> float:
    """The best FLOP/s of the device's fastest dense kernels in `dtype` (TF32 math if asked): large matmuls and a
    large 3x3 convolution in both layouts, three timings each, the fastest kept. On a CPU both vary with size and with
    what else the machine runs, and oneDNN's convolutions can outrun MKL's matmul (here 0.17 against 0.10-0.18
    TFLOP/s), so a matmul alone is no ceiling: MFU against it read 120 %."""
    cuda = device.type == "cuda"
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    kernels = []
    for n in (8192,) if cuda else (1024, 2048, 4096):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        kernels.append((lambda a=a, b=b: a @ b, 2 * n**3))
    batch = 512 if cuda else 64
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(batch, 256, 16, 16, device=device, dtype=dtype).contiguous(memory_format=layout)
        w = torch.randn(256, 256, 3, 3, device=device, dtype=dtype).contiguous(memory_format=layout)
        kernels.append((lambda x=x, w=w: F.conv2d(x, w, padding=1), 2 * batch * 16 * 16 * 256 * 256 * 9))
    best = 0.0
    try:
        for kernel, flops in kernels:
            kernel()  # warm-up
            reps = 20 if cuda else 1
            seconds = timed(lambda kernel=kernel, reps=reps: [kernel() for _ in range(reps)], device, 3, best=True)
            best = max(best, flops * reps / seconds)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
    return best


def peak_for(device: torch.device, precision: str) -> tuple[float, str]:
    """The ceiling MFU is measured against, and its math mode. fp32 convolutions on CUDA run in TF32 when cuDNN
    allows it (PyTorch's default), so the fp32 ceiling is then TF32's; a CPU without native bf16 runs bf16 slower
    than fp32, so the faster of fp32 and the run's dtype is taken (else MFU could read over 100 %)."""
    dtype = PRECISION_DTYPES[precision]
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    peaks = {"tf32" if tf32 else "float32": measured_peak_flops(device, torch.float32, tf32)}
    if dtype != torch.float32:
        peaks[str(dtype).removeprefix("torch.")] = measured_peak_flops(device, dtype)
    mode = max(peaks, key=peaks.__getitem__)
    return peaks[mode], mode
