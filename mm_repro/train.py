"""Training: data -> model -> mixing -> loss -> SGD, once per step; test error and NLL once per epoch.

Reproduces the official Manifold Mixup protocol by default (paper.md 2): SGD with Nesterov momentum 0.9, lr 0.1,
weight decay 1e-4 on every parameter, x0.1 at the milestones (the LR of epoch e is lr * gamma^(milestones <= e),
as the official `adjust_learning_rate`), batch 100, BCE on softmax. Every epoch ends with an atomic checkpoint
(model, optimizer, schedule, every RNG state, the records so far); rerunning the same command resumes from it and
ends bitwise where an unbroken run would on a deterministic CPU run. SIGTERM/SIGINT/SIGUSR1 finish the current step,
write a mid-epoch checkpoint and stop with exit code 75.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mm_repro import distributed, mixing, records
from mm_repro.config import TrainRunConfig
from mm_repro.data import DeviceLoader, load_arrays
from mm_repro.errors import UserError
from mm_repro.losses import LOSSES
from mm_repro.models import build, count_parameters
from mm_repro.tracking import NullTracker, open_tracker

log = logging.getLogger("mm_repro.train")

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; the checkpoint is written
HEADER = f"{'epoch':>7} {'lr':>9} {'train_loss':>11} {'test_err%':>9} {'test_nll':>9} {'img/s':>9} {'time_left':>10}"


class Preempted(BaseException):
    """Raised after a stop signal once the checkpoint is written (BaseException: it stops a whole sweep)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.exit_code = PREEMPTED_EXIT_CODE


class StopSignals:
    """Turns SIGTERM, SIGINT and SIGUSR1 into a flag the loop checks after each step; a second signal kills."""

    SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)) if s)

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

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def pick_device(name: str, job_num: int | None = None) -> torch.device:
    """cpu, or a CUDA device; job i of a multirun takes GPU i mod #GPUs when several are visible."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = job_num % torch.cuda.device_count() if job_num is not None else torch.cuda.current_device()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def seed_everything(seed: int, deterministic: bool) -> None:
    """One seed for python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks its fastest kernels once


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Network(nn.Module):
    """The model's forward with mixing at point k, as one module call, so that DDP and torch.compile see one graph.

    `lam` is a 0-dim tensor, never a Python float, so a compiled graph is not recompiled for every lam; k is a
    Python int, so there is at most one graph per mixing point (performance.md 4). `lam=None` mixes nothing (ERM).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        k: int = 0,
        lam: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if lam is None:
            return self.model(x), targets
        h, targets = mixing.mix(self.model.forward_until(x, k), targets, lam, index)
        return self.model.forward_from(h, k), targets


def uses_channels_last(cfg: TrainRunConfig, device: torch.device) -> bool:
    return device.type == "cuda" if cfg.train.channels_last is None else cfg.train.channels_last


def _refuse_onednn_bug(model: nn.Module, cfg: TrainRunConfig, device: torch.device) -> None:
    """oneDNN's CPU backward of a 1x1 stride-2 convolution in channels_last (which torch.compile also picks) with
    fewer input channels than its channel block (8 with AVX2, 16 with AVX-512) hangs, crashes or returns wrong
    gradients (oneDNN issue #6035; seen here with torch 2.14.1 at model.width=4). Refuse it rather than risk that."""
    if device.type != "cpu" or not (uses_channels_last(cfg, device) or cfg.train.compile):
        return
    narrow = [
        m.in_channels
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 16
    ]
    if narrow:
        raise UserError(
            f"model.width={cfg.model.width} with train.channels_last or train.compile on the CPU: a strided 1x1 "
            f"convolution with {min(narrow)} input channels meets a oneDNN bug (hangs or wrong gradients); use "
            "model.width >= 16 there, or plain fp32 eager (train.channels_last=false train.compile=false)"
        )


def build_model_and_optimizer(cfg: TrainRunConfig, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model on `device` (channels_last if chosen) and the official SGD (fused if chosen: one kernel per step)."""
    model = build(cfg.model.name, cfg.dataset.num_classes, width=cfg.model.width).to(device)
    _refuse_onednn_bug(model, cfg, device)
    if uses_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    fused = device.type == "cuda" if cfg.train.fused is None else cfg.train.fused
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.train.lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
        nesterov=cfg.train.nesterov,
        fused=fused or None,  # None, not False: torch then picks its foreach path
    )
    return model, optimizer


def compile_network(net: nn.Module, layers: list[int], mode: str | None = None, backend: str | Any = "inductor"):
    """torch.compile with static shapes: one graph per (mixing point, batch size), never one per lam.

    An epoch's last batch may be smaller than the others (the official loader keeps it), so each mixing point can
    need two graphs; dynamo's recompile limit (8 by default) is raised to cover them rather than falling back to
    eager for the later ones."""
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 2 * max(len(layers), 1))
    return torch.compile(net, mode=mode, backend=backend, dynamic=False)


class Stepper:
    """One training step: mixing draw, forward to k, mix, forward from k, loss in fp32, backward, SGD step."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: TrainRunConfig,
        device: torch.device,
        world: distributed.World | None = None,
    ) -> None:
        self.optimizer, self.cfg, self.device = optimizer, cfg, device
        self.loss_fn = LOSSES[cfg.train.loss]
        self.num_classes = cfg.dataset.num_classes
        precision = cfg.train.precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        net: nn.Module = Network(model)
        if world is not None and world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        layers = list(cfg.method.layers) if cfg.method.name != "erm" else []
        self.net = compile_network(net, layers, cfg.train.compile_mode) if cfg.train.compile else net

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def loss(self, x: torch.Tensor, y: torch.Tensor, layers: list[int] | None = None) -> torch.Tensor:
        """The training loss of one batch (mixed unless method=erm), k drawn from `layers` (default: method's)."""
        # scatter_ rather than F.one_hot, and torch.full rather than torch.tensor: neither waits for the GPU.
        targets = torch.zeros(len(y), self.num_classes, device=y.device).scatter_(1, y[:, None], 1.0)
        method = self.cfg.method
        with self.autocast():
            if method.name == "erm":
                logits, targets = self.net(x, targets)
            else:
                draw = mixing.draw(layers or method.layers, method.alpha, len(y), method.pairing, x.device)
                lam = torch.full((), draw.lam, dtype=torch.float32, device=x.device)
                logits, targets = self.net(x, targets, draw.k, lam, draw.index)
        return self.loss_fn(logits, targets)

    def step(self, x: torch.Tensor, y: torch.Tensor, layers: list[int] | None = None) -> torch.Tensor:
        """One SGD step; `layers` restricts the mixing point (bench's warm-up compiles each point in turn)."""
        loss = self.loss(x, y, layers)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader) -> tuple[float, float]:
    """Test error (%) and test NLL (mean cross-entropy), one host sync at the end."""
    model.eval()
    wrong = torch.zeros((), device=loader.labels.device)
    nll = torch.zeros((), device=loader.labels.device, dtype=torch.float64)
    for x, y in loader.batches(loader.order()):
        logits = model(x).float()
        wrong += (logits.argmax(1) != y).sum()
        nll += F.cross_entropy(logits, y, reduction="sum").double()
    n = loader.num_images
    return 100.0 * wrong.item() / n, nll.item() / n


class Progress:
    """A one-line progress bar within the epoch, only when stderr is a terminal (no host sync: counts only)."""

    def __init__(self, total: int) -> None:
        self.total, self.enabled = total, sys.stderr.isatty()

    def update(self, step: int) -> None:
        if self.enabled and (step % 10 == 0 or step == self.total):
            done = int(30 * step / self.total)
            sys.stderr.write(f"\r  [{'#' * done}{'.' * (30 - done)}] {step}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 60 + "\r")


def _format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_info(cfg: TrainRunConfig) -> dict:
    """The keys that identify a table cell (tables groups on them)."""
    return {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "width": cfg.model.width,
        "method": cfg.method.name,
        "alpha": cfg.method.alpha if cfg.method.name != "erm" else None,
        "layers": list(cfg.method.layers) if cfg.method.name != "erm" else [],
        "pairing": cfg.method.pairing,
        "protocol": cfg.protocol.name,
        "loss": cfg.train.loss,
        "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size,
        "precision": cfg.train.precision,
        "per_class_cap": cfg.dataset.per_class_cap,
        "seed": cfg.seed,
        "experiment": cfg.experiment,
    }


@dataclass
class Session:
    """Everything one training run holds: built once by `_setup`, saved and restored whole by the checkpoint."""

    cfg: TrainRunConfig
    run_dir: Path
    config: dict
    world: distributed.World
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stepper: Stepper
    train_loader: DeviceLoader
    test_loader: DeviceLoader
    epoch: int = 0
    position: dict | None = None  # where a mid-epoch stop left the epoch
    metrics: list = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / records.CHECKPOINT

    def say(self, message: str) -> None:
        if self.world.is_main:
            log.info(message)


def _setup(cfg: TrainRunConfig, run_dir: Path, config: dict, job_num: int | None) -> Session:
    world = distributed.init(use_cuda=cfg.device != "cpu" and torch.cuda.is_available())
    if world.distributed and cfg.train.batch_size % world.size:
        raise UserError(f"train.batch_size={cfg.train.batch_size} must divide by the {world.size} processes")
    if world.is_main:
        records.check_writable(run_dir)
    device = pick_device(cfg.device, world.local_rank if world.distributed else job_num)
    seed_everything(cfg.seed + world.rank, cfg.deterministic)  # per-rank seeds; DDP copies rank 0's weights
    model, optimizer = build_model_and_optimizer(cfg, device)
    channels_last = uses_channels_last(cfg, device)
    train_split, test_split = load_arrays(cfg.dataset, cfg.seed)
    local_batch = cfg.train.batch_size // world.size
    return Session(
        cfg=cfg,
        run_dir=run_dir,
        config=config,
        world=world,
        device=device,
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.train.milestones, cfg.train.gamma),
        stepper=Stepper(model, optimizer, cfg, device, world),
        train_loader=DeviceLoader(train_split, cfg.dataset, local_batch, device, True, channels_last),
        test_loader=DeviceLoader(test_split, cfg.dataset, cfg.train.eval_batch_size, device, False, channels_last),
    )


def _save(s: Session) -> None:
    """Checkpoint the session (a collective: every rank's RNG state is gathered; rank 0 writes)."""
    rng_ranks = distributed.gather(rng_state(), s.world)
    if s.world.is_main:
        records.save_checkpoint(
            s.checkpoint_path,
            {
                "format": 1,
                "model": s.model.state_dict(),
                "optimizer": s.optimizer.state_dict(),
                "scheduler": s.scheduler.state_dict(),
                "scaler": s.stepper.scaler.state_dict(),
                "rng": rng_ranks[0],
                "rng_ranks": rng_ranks,
                "epoch": s.epoch,
                "position": s.position,
                "metrics": s.metrics,
                "wall_seconds": s.wall_seconds,
                "config": s.config,
            },
        )
    distributed.barrier(s.world)


def _restore(s: Session) -> None:
    """Resume from checkpoints/last.pt, or, with train.resume=false, archive earlier records and start over."""
    if not s.cfg.train.resume:
        archived = records.archive_previous(s.run_dir) if s.world.is_main else None
        if archived:
            s.say(f"train.resume=false: earlier records moved to {archived}")
        distributed.barrier(s.world)
        return
    if not s.checkpoint_path.exists():
        return
    saved = records.load_checkpoint(s.checkpoint_path)
    rng_ranks = saved.get("rng_ranks", [saved["rng"]])
    if len(rng_ranks) != s.world.size:
        raise UserError(
            f"checkpoint {s.checkpoint_path} was written by {len(rng_ranks)} process(es); resume it with as many"
        )
    s.model.load_state_dict(saved["model"])
    s.optimizer.load_state_dict(saved["optimizer"])
    s.scheduler.load_state_dict(saved["scheduler"])
    s.stepper.scaler.load_state_dict(saved["scaler"])
    set_rng_state(rng_ranks[s.world.rank])
    s.epoch, s.position, s.metrics, s.wall_seconds = (
        saved["epoch"],
        saved["position"],
        saved["metrics"],
        saved["wall_seconds"],
    )
    if s.world.is_main:
        records.write_metrics(s.run_dir / records.METRICS, s.metrics)  # drop lines past the checkpoint
    where = f"epoch {s.epoch}" + (f", step {s.position['step']}" if s.position else "")
    s.say(f"resuming {s.run_dir} from {where}")


def _train_epoch(s: Session, stop: StopSignals) -> tuple[float, int, float] | None:
    """One epoch (or its rest, after a mid-epoch stop): (loss sum, images, seconds); None if a signal stopped it."""
    device, world = s.device, s.world
    position = s.position or {"step": 0, "order": None, "loss_sum": None, "seen": 0}
    s.position = None
    order = position["order"]
    if order is None:
        order = distributed.broadcast(s.train_loader.order(), world)  # rank 0's order on every rank
    order = order.to(device)
    local = order[world.rank :: world.size][: len(order) // world.size]
    loss_sum = torch.zeros((), device=device) if position["loss_sum"] is None else position["loss_sum"].to(device)
    seen, step = position["seen"], position["step"]
    steps = s.train_loader.num_batches(len(local))
    check_every = 1 if not world.distributed else 25  # a collective per check: not every step under DDP
    s.model.train()
    progress = Progress(steps)
    _sync(device)
    start = time.perf_counter()
    for x, y in s.train_loader.batches(local, step):
        loss_sum += s.stepper.step(x, y).float() * len(y)
        seen += len(y)
        step += 1
        progress.update(step)
        if step < steps and step % check_every == 0 and distributed.any_rank(stop.received is not None, world, device):
            s.wall_seconds += time.perf_counter() - start
            progress.close()
            # The ranks' mean partial loss sum: after the resume, the epoch's all_sum over ranks gives the total.
            partial = distributed.all_sum(loss_sum.clone(), world) / world.size
            s.position = {"step": step, "order": order.cpu(), "loss_sum": partial, "seen": seen}
            _save(s)
            return None
    _sync(device)
    progress.close()
    loss_sum = distributed.all_sum(loss_sum, world)
    seen_all = int(distributed.all_sum(torch.tensor(seen - position["seen"], device=device), world).item())
    return loss_sum.item(), seen_all + position["seen"] * world.size, time.perf_counter() - start


def run(cfg: TrainRunConfig, run_dir: Path, config: dict, group: str | None = None, job_num: int | None = None) -> dict:
    """Train (or resume) the configured run in `run_dir`; returns result.json's content."""
    s = _setup(cfg, Path(run_dir), config, job_num)
    _restore(s)
    params = count_parameters(s.model)
    tracker = open_tracker(cfg.logger, s.run_dir, config, str(s.run_dir), group) if s.world.is_main else NullTracker()
    exit_code = 1
    try:
        s.say(
            f"{cfg.dataset.name} {cfg.model.name} (width {cfg.model.width}, {params:,} params) {cfg.method.name} "
            f"alpha={cfg.method.alpha} layers={list(cfg.method.layers)} | {s.train_loader.num_images:,} train / "
            f"{s.test_loader.num_images:,} test images | {s.device} x {s.world.size} process(es) | {s.run_dir}"
        )
        s.say(HEADER)
        with StopSignals() as stop:
            while s.epoch < cfg.train.epochs:
                resumed_seen = s.position["seen"] * s.world.size if s.position else 0
                outcome = _train_epoch(s, stop)
                if outcome is None:
                    raise Preempted(
                        f"stopped by signal {stop.received} at epoch {s.epoch + 1}, step {s.position['step']}; "
                        f"checkpoint written to {s.checkpoint_path}: rerun the same command to resume"
                    )
                loss_sum, seen, train_seconds = outcome
                lr = s.optimizer.param_groups[0]["lr"]
                s.scheduler.step()
                eval_start = time.perf_counter()
                test_error, test_nll = evaluate(s.model, s.test_loader)
                epoch_seconds = train_seconds + time.perf_counter() - eval_start
                s.wall_seconds += epoch_seconds
                s.epoch += 1
                row = {
                    "epoch": s.epoch,
                    "lr": lr,
                    "train_loss": loss_sum / max(seen, 1),
                    "test_error": test_error,
                    "test_nll": test_nll,
                    "seconds": epoch_seconds,
                    "images_per_second": (seen - resumed_seen) / max(train_seconds, 1e-9),
                }
                s.metrics.append(row)
                if s.world.is_main:
                    records.write_metrics(s.run_dir / records.METRICS, s.metrics)
                last = s.epoch == cfg.train.epochs
                stopping = distributed.any_rank(stop.received is not None, s.world, s.device)
                if last or stopping or s.epoch % cfg.train.checkpoint_every == 0:
                    _save(s)
                tracker.log(row, step=s.epoch)
                remaining = (cfg.train.epochs - s.epoch) * s.wall_seconds / len(s.metrics)
                s.say(
                    f"{s.epoch:>7d} {lr:>9.5f} {row['train_loss']:>11.5f} {test_error:>9.2f} {test_nll:>9.4f} "
                    f"{row['images_per_second']:>9.0f} {_format_seconds(remaining):>10}"
                )
                if stopping and not last:
                    raise Preempted(
                        f"stopped by signal {stop.received} after epoch {s.epoch}; checkpoint written to "
                        f"{s.checkpoint_path}: rerun the same command to resume"
                    )
        result = make_result(cfg, s.metrics, params, s.wall_seconds, s.device)
        if s.world.is_main:
            records.write_json(s.run_dir / records.RESULT, result)
        tracker.summary(result)
        s.say(
            f"final test error {result['final']['test_error']:.2f}% (NLL {result['final']['test_nll']:.4f}); best "
            f"{result['best']['test_error']:.2f}% at epoch {result['best']['epoch']} | {s.run_dir / records.RESULT}"
        )
        exit_code = 0
        return result
    finally:
        tracker.finish(exit_code)
        distributed.shutdown(s.world)


def make_result(
    cfg: TrainRunConfig, metrics: list[dict], params: int, wall_seconds: float, device: torch.device
) -> dict:
    """result.json: final-epoch and best-on-test figures (the official code reported the best; we show both)."""
    final = metrics[-1]
    best = min(metrics, key=lambda r: (r["test_error"], r["epoch"]))
    rates = [r["images_per_second"] for r in metrics if math.isfinite(r["images_per_second"])]
    return {
        "run": _run_info(cfg),
        "final": {"test_error": final["test_error"], "test_nll": final["test_nll"], "epoch": final["epoch"]},
        "best": {"test_error": best["test_error"], "test_nll": best["test_nll"], "epoch": best["epoch"]},
        "params": params,
        "epochs": final["epoch"],
        "wall_seconds": wall_seconds,
        "images_per_second": float(np.median(rates)) if rates else None,
        "git_commit": records.git_commit(),
        "torch_version": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": {"method": asdict(cfg.method), "train": asdict(cfg.train)},
    }
