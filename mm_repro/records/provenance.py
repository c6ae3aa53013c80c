"""Where a committed figure came from: the command as typed, the code (git commit, mm_repro version), torch, Python,
the device and its threads, when it ran and how long it took. The experiments (`synthetic`, `flattening`, `spiral`)
write this beside their numbers, so that a table under results/ says how it was obtained."""

from __future__ import annotations

import datetime
import platform
import shlex
import sys
import time

import torch

from mm_repro import __version__
from mm_repro.records.result import git_commit


def command_line() -> str:
    """The command as the user typed it: `python -m mm_repro <command> <overrides>` (cli sets argv[0] to
    `mm_repro <command>`)."""
    head = sys.argv[0] if sys.argv[0].startswith("mm_repro ") else "mm_repro"
    return " ".join(["python -m", head, *map(shlex.quote, sys.argv[1:])])


def device_label(device: torch.device) -> str:
    """The GPU's name, or `cpu (<processor>, N threads)`."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def start_record() -> dict:
    """Taken when a command starts (the checkout may change while a long one runs): command, code and versions."""
    return {
        "command": command_line(),
        "git_commit": git_commit(),
        "mm_repro_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "started_at": time.time(),
    }


def provenance(start: dict, device: torch.device) -> dict:
    """The record of one command's run, completed at its end: `start` (from start_record), device, wall time."""
    record = {k: v for k, v in start.items() if k != "started_at"}
    return {**record, "device": device_label(device), "wall_seconds": round(time.time() - start["started_at"], 1)}
