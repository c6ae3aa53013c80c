"""The device a job trains on, and what goes with it: cpu or a CUDA device that no other running job of this user
holds (a lock file per GPU, released by the kernel however the process ends), cuDNN's flags, the memory-format policy
and the oneDNN bug it steers around, and the one sync a timing or a read needs."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from mm_repro.errors import UserError

log = logging.getLogger("mm_repro.training.devices")


def sync(device: torch.device) -> None:
    """Wait for the device (a no-op on the CPU): only where a timing or a read needs it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configure_backends(deterministic: bool) -> None:
    """Bitwise-repeatable kernels, or cuDNN's autotuner (fixed shapes: it picks its fastest kernels once)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def uses_channels_last(choice: bool | None, device: torch.device, model: nn.Module) -> bool:
    """`train.channels_last`: null means wherever it is safe: on CUDA, and on the CPU (where oneDNN runs
    channels_last convolutions ~15 % faster for PreActResNet-18, docs/benchmarks.md) unless the model has a narrow
    strided 1x1 convolution (see `refuse_onednn_bug`)."""
    if choice is not None:
        return choice
    return device.type == "cuda" or not _narrow_strided_1x1(model)


def _narrow_strided_1x1(model: nn.Module) -> list[int]:
    return [
        m.in_channels
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 16
    ]


def refuse_onednn_bug(model: nn.Module, width: int, device: torch.device, channels_last: bool, compiled: bool) -> None:
    """oneDNN's CPU backward of a 1x1 stride-2 convolution in channels_last (which torch.compile also picks) with
    fewer input channels than its channel block (8 with AVX2, 16 with AVX-512) hangs, crashes or returns wrong
    gradients (oneDNN issue #6035; seen here with torch 2.14.1 at model.width=4). Refuse it rather than risk that."""
    if device.type != "cpu" or not (channels_last or compiled):
        return
    narrow = _narrow_strided_1x1(model)
    if narrow:
        raise UserError(
            f"model.width={width} with train.channels_last or train.compile on the CPU: a strided 1x1 convolution "
            f"with {min(narrow)} input channels meets a oneDNN bug (hangs or wrong gradients); use model.width >= 16 "
            "there, or plain fp32 eager (train.channels_last=false train.compile=false)"
        )


# ---------------------------------------------------------------- devices


def gpu_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"mm_repro-gpus-{os.getuid()}"


def _gpu_key(index: int) -> str:
    """A name for GPU `index` that two processes with different CUDA_VISIBLE_DEVICES agree on."""
    props = torch.cuda.get_device_properties(index)
    return str(getattr(props, "uuid", f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')}-{index}")).replace("/", "-")


@contextlib.contextmanager
def claim_gpu(count: int, keys: list[str], lock_dir: Path, poll_seconds: float = 2.0) -> Iterator[int]:
    """Hold one of `count` GPUs that no other process of this user holds (a lock file per GPU, released by the
    kernel when the process ends, even by SIGKILL); wait while all are taken. Yields the GPU's index."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index in range(count):
            fd = os.open(lock_dir / f"{keys[index]}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield index
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        if not waited:
            log.info(f"all {count} GPUs are held by other mm_repro jobs; waiting for one")
            waited = True
        time.sleep(poll_seconds)


@contextlib.contextmanager
def training_device(name: str, in_sweep: bool, local_rank: int | None = None) -> Iterator[torch.device]:
    """cpu or a CUDA device for the duration of a job. A sweep's job holds a GPU that no other running job holds
    (jobs of the local launcher run side by side); a DDP rank takes its LOCAL_RANK."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    if name == "cpu" or not torch.cuda.is_available():
        yield torch.device("cpu")
        return
    count = torch.cuda.device_count()
    if local_rank is not None or not in_sweep or count == 1:
        index = local_rank if local_rank is not None else torch.cuda.current_device()
        torch.cuda.set_device(index)
        yield torch.device("cuda", index)
        return
    with claim_gpu(count, [_gpu_key(i) for i in range(count)], gpu_lock_dir()) as index:
        torch.cuda.set_device(index)
        yield torch.device("cuda", index)
