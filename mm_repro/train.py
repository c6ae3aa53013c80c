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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mm_repro import mixing, records
from mm_repro.config import TrainRunConfig
from mm_repro.data import DeviceLoader, load_arrays
from mm_repro.errors import UserError
from mm_repro.losses import LOSSES
from mm_repro.models import build, count_parameters
from mm_repro.tracking import open_tracker

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


class Stepper:
    """One training step: mixing draw, forward to k, mix, forward from k, loss in fp32, backward, SGD step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainRunConfig, device: torch.device):
        self.model, self.optimizer, self.cfg, self.device = model, optimizer, cfg, device
        self.loss_fn = LOSSES[cfg.train.loss]
        self.num_classes = cfg.dataset.num_classes
        precision = cfg.train.precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        # torch.compile: k is a Python int (at most 5 variants, under the recompile limit) and lam never enters a
        # compiled graph, since mixing happens between the two compiled halves (performance.md 4).
        compile_fn = torch.compile if cfg.train.compile else (lambda f: f)
        self.forward_until = compile_fn(model.forward_until)
        self.forward_from = compile_fn(model.forward_from)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (mixed unless method=erm)."""
        targets = F.one_hot(y, self.num_classes).float()
        method = self.cfg.method
        with self.autocast():
            if method.name == "erm":
                logits = self.forward_from(x, 0)
            else:
                draw = mixing.draw(method.layers, method.alpha, len(y), method.pairing, x.device)
                h = self.forward_until(x, draw.k)
                h, targets = mixing.mix(h, targets, draw.lam, draw.index)
                logits = self.forward_from(h, draw.k)
        return self.loss_fn(logits, targets)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss(x, y)
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


def run(cfg: TrainRunConfig, run_dir: Path, config: dict, group: str | None = None, job_num: int | None = None) -> dict:
    """Train (or resume) the configured run in `run_dir`; returns result.json's content."""
    run_dir = Path(run_dir)
    records.check_writable(run_dir)
    device = pick_device(cfg.device, job_num)
    seed_everything(cfg.seed, cfg.deterministic)
    on_cuda = device.type == "cuda"

    model = build(cfg.model.name, cfg.dataset.num_classes, width=cfg.model.width).to(device)
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)
    train_split, test_split = load_arrays(cfg.dataset, cfg.seed)
    train_loader = DeviceLoader(train_split, cfg.dataset, cfg.train.batch_size, device, True, on_cuda)
    test_loader = DeviceLoader(test_split, cfg.dataset, cfg.train.eval_batch_size, device, False, on_cuda)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.train.lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
        nesterov=cfg.train.nesterov,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.train.milestones, cfg.train.gamma)
    stepper = Stepper(model, optimizer, cfg, device)

    checkpoint_path = run_dir / records.CHECKPOINT
    state = {"epoch": 0, "position": None, "metrics": [], "wall_seconds": 0.0}
    if checkpoint_path.exists() and cfg.train.resume:
        saved = records.load_checkpoint(checkpoint_path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        stepper.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        state = {k: saved[k] for k in state}
        records.write_metrics(run_dir / records.METRICS, state["metrics"])  # drop lines past the checkpoint
        where = f"epoch {state['epoch']}" + (f", step {state['position']['step']}" if state["position"] else "")
        log.info(f"resuming {run_dir} from {where}")
    elif not cfg.train.resume:
        archived = records.archive_previous(run_dir)
        if archived:
            log.info(f"train.resume=false: earlier records moved to {archived}")

    def checkpoint(position: dict | None) -> None:
        records.save_checkpoint(
            checkpoint_path,
            {
                "format": 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": stepper.scaler.state_dict(),
                "rng": rng_state(),
                "epoch": state["epoch"],
                "position": position,
                "metrics": state["metrics"],
                "wall_seconds": state["wall_seconds"],
                "config": config,
            },
        )

    params = count_parameters(model)
    tracker = open_tracker(cfg.logger, run_dir, config, name=str(run_dir), group=group)
    exit_code = 1
    try:
        log.info(
            f"{cfg.dataset.name} {cfg.model.name} (width {cfg.model.width}, {params:,} params) {cfg.method.name} "
            f"alpha={cfg.method.alpha} layers={list(cfg.method.layers)} | {len(train_split.labels):,} train / "
            f"{len(test_split.labels):,} test images | {device} | {run_dir}"
        )
        log.info(HEADER)
        with StopSignals() as stop:
            while state["epoch"] < cfg.train.epochs:
                epoch = state["epoch"]
                position = state["position"] or {"step": 0, "order": train_loader.order(), "loss_sum": None, "seen": 0}
                state["position"] = None
                model.train()
                loss_sum = torch.zeros((), device=device) if position["loss_sum"] is None else position["loss_sum"]
                loss_sum = loss_sum.to(device)
                seen, step = position["seen"], position["step"]
                progress = Progress(len(train_loader))
                _sync(device)
                start = time.perf_counter()
                for x, y in train_loader.batches(position["order"], step):
                    loss_sum += stepper.step(x, y).float() * len(y)
                    seen += len(y)
                    step += 1
                    progress.update(step)
                    if stop.received is not None and step < len(train_loader):
                        state["wall_seconds"] += time.perf_counter() - start
                        progress.close()
                        checkpoint({"step": step, "order": position["order"], "loss_sum": loss_sum, "seen": seen})
                        raise Preempted(
                            f"stopped by signal {stop.received} at epoch {epoch + 1}, step {step}; checkpoint "
                            f"written to {checkpoint_path}: rerun the same command to resume"
                        )
                _sync(device)
                train_seconds = time.perf_counter() - start
                progress.close()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                test_error, test_nll = evaluate(model, test_loader)
                epoch_seconds = time.perf_counter() - start
                state["wall_seconds"] += epoch_seconds
                state["epoch"] = epoch + 1
                row = {
                    "epoch": epoch + 1,
                    "lr": lr,
                    "train_loss": loss_sum.item() / max(seen, 1),
                    "test_error": test_error,
                    "test_nll": test_nll,
                    "seconds": epoch_seconds,
                    "images_per_second": (seen - position["seen"]) / max(train_seconds, 1e-9),
                }
                state["metrics"].append(row)
                records.write_metrics(run_dir / records.METRICS, state["metrics"])
                last = state["epoch"] == cfg.train.epochs
                if last or state["epoch"] % cfg.train.checkpoint_every == 0 or stop.received is not None:
                    checkpoint(None)
                tracker.log(row, step=row["epoch"])
                remaining = (cfg.train.epochs - state["epoch"]) * state["wall_seconds"] / max(len(state["metrics"]), 1)
                log.info(
                    f"{row['epoch']:>7d} {lr:>9.5f} {row['train_loss']:>11.5f} {test_error:>9.2f} {test_nll:>9.4f} "
                    f"{row['images_per_second']:>9.0f} {_format_seconds(remaining):>10}"
                )
                if stop.received is not None and not last:
                    raise Preempted(
                        f"stopped by signal {stop.received} after epoch {epoch + 1}; checkpoint written to "
                        f"{checkpoint_path}: rerun the same command to resume"
                    )
        result = make_result(cfg, state["metrics"], params, state["wall_seconds"], device)
        records.write_json(run_dir / records.RESULT, result)
        tracker.summary(result)
        log.info(
            f"final test error {result['final']['test_error']:.2f}% (NLL {result['final']['test_nll']:.4f}); best "
            f"{result['best']['test_error']:.2f}% at epoch {result['best']['epoch']} | {run_dir / records.RESULT}"
        )
        exit_code = 0
        return result
    finally:
        tracker.finish(exit_code)


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
