"""What a training process needs around the model: stop signals, the device, and each run's own random streams.

Randomness (docs/protocol.md §2): the official code draws k with python's `random`, lam and the pairing with numpy, and
everything else (initial weights, epoch order, crops and flips) with torch, all from unseeded global generators.
Here each run owns one generator of each kind, seeded from the run's seed (`RunRandom`), and the initial weights are
drawn from torch's CPU generator seeded with the same seed. So a run draws the same numbers whether it trains alone or
packed with others in one process (mm_repro.training.trainers.packed), and its checkpoint holds exactly its own streams.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mm_repro.errors import Preempted, UserError

log = logging.getLogger("mm_repro.training.runtime")


class StopSignals:
    """Turns SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 into a flag the loop checks after each step; a second signal kills.

    SIGUSR2 is the time-limit warning submitit asks SLURM for (`--signal=USR2@signal_delay_s`); submitit's own handler
    requeues the job and exits at once, which would lose the steps since the last checkpoint. So it is caught here
    like the others, and once the loop has written every checkpoint at the step (it leaves with Preempted), the handler
    it displaced runs: submitit requeues the job, which resumes from that step."""

    SIGNALS = tuple(
        s
        for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None), getattr(signal, "SIGUSR2", None))
        if s
    )
    CHAINED = tuple(s for s in (getattr(signal, "SIGUSR2", None),) if s)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        for s, handler in self._previous.items():  # a second signal acts as it normally would
            signal.signal(s, handler)

    def __enter__(self) -> StopSignals:
        for s in self.SIGNALS:
            # Outside the main thread (some launchers) no handler can be set: no preemption support there.
            with contextlib.suppress(ValueError):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        displaced = self._previous.get(self.received)
        stopped = exc_type is not None and issubclass(exc_type, Preempted)
        if stopped and self.received in self.CHAINED and callable(displaced):
            displaced(self.received, None)  # submitit: requeue, then exit


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


class RunRandom:
    """One run's random streams: python (the mixing point k), numpy (lam and the pairing, as the official code) and
    torch on the training device (epoch order, crop offsets, flips)."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self.python = random.Random(seed)
        self.numpy = np.random.RandomState(seed)  # the legacy stream, as the official np.random.beta/permutation
        self.torch = torch.Generator(device=device)
        self.torch.manual_seed(seed)

    def state(self) -> dict:
        return {
            "python": self.python.getstate(),
            "numpy": self.numpy.get_state(),
            "torch": self.torch.get_state(),
            "device_type": self.device.type,
        }

    def load_state(self, state: dict, source: str) -> None:
        if state["device_type"] != self.device.type:
            raise UserError(
                f"{source} was written on {state['device_type']}, and its data-order stream cannot continue on "
                f"{self.device.type}; resume with device={state['device_type']}, or pass train.resume=false"
            )
        self.python.setstate(state["python"])
        self.numpy.set_state(state["numpy"])
        self.torch.set_state(state["torch"])


def init_model(builder: Any, seed: int) -> nn.Module:
    """Build a model with initial weights drawn from torch's CPU generator seeded with `seed`, leaving the global
    generator as it was (so that several runs in one process each get their own seed's weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder()


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
