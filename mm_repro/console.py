"""Progress on every long command, through tqdm: a bar on a terminal; in a log (stderr not a terminal, as under SLURM)
a plain line at a steady interval (`MM_REPRO_PROGRESS_SECONDS`, default 60), each refresh of the bar written as one
line instead of redrawn with carriage returns; a task shorter than the interval writes nothing there, so a short
run's stderr holds only what it has to say (an error stays one line)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


class _Lines:
    """A file for tqdm that turns each redraw into a line of its own (a log keeps them readable)."""

    def write(self, text: str) -> None:
        text = text.strip("\r\n\x1b[A ")
        if text:
            sys.stderr.write(text + "\n")

    def flush(self) -> None:
        sys.stderr.flush()


class _Bar(tqdm):
    """tqdm whose postfix never forces a line into a log (tqdm's `set_postfix_str` redraws at once, which in a log
    would print a line before the interval and break a short command's one-line error)."""

    in_log = False

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        super().set_postfix_str(s, refresh=refresh and not self.in_log)


def progress(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    unit_scale: float = 1.0,
    enabled: bool = True,
) -> Any:
    """A tqdm bar over `iterable` (or `total` steps, updated by hand): drawn on a terminal, a line every
    MM_REPRO_PROGRESS_SECONDS in a log, nothing when not `enabled` (a DDP rank other than the first)."""
    terminal = sys.stderr.isatty()
    interval = float(os.environ.get("MM_REPRO_PROGRESS_SECONDS", "60"))
    bar = _Bar(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit_scale if unit_scale != 1.0 else False,
        disable=not enabled,
        leave=False,
        file=None if terminal else _Lines(),
        mininterval=0.5 if terminal else interval,
        delay=0.0 if terminal else interval,  # in a log, nothing for a task shorter than the interval
        maxinterval=interval if not terminal else 10.0,
        ncols=None if terminal else 100,
        dynamic_ncols=terminal,
    )
    bar.in_log = not terminal
    return bar


def emit(logger: logging.Logger, message: str, to_files: bool) -> None:
    """`message` through the handlers of `logger` and its ancestors that write files (`to_files`) or the others."""
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, None, None)
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            if isinstance(handler, logging.FileHandler) == to_files:
                handler.handle(record)
        node = node.parent if node.propagate else None


def hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def progress_bar(total: int, enabled: bool, desc: str = "", images_per_step: int = 1, run_left: str = "") -> Any:
    """The steps of an epoch (`progress`): a bar on a terminal, a line at a steady interval in a log, with the images
    per second, the epoch's time left and, from the second epoch, the run's (no host sync: counts only)."""
    return _Steps(progress(total=total, desc=desc, unit="img", unit_scale=images_per_step, enabled=enabled), run_left)


class _Steps:
    """tqdm, told the absolute step (the loop's cursor) rather than an increment."""

    def __init__(self, bar: Any, run_left: str) -> None:
        self.bar = bar
        if run_left:
            bar.set_postfix_str(f"run left {run_left}", refresh=False)

    def update(self, step: int) -> None:
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()
