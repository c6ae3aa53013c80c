"""The lines a user sees of a run and a refused command come from here (a command's own report is printed by its
module in commands/): the one-line error and its exit code's wording (`one_line`,
`error_line`, `error`), the warnings, a run's console lines (`emit`, the epoch table's header and rows, the ETA), and
progress through tqdm: a bar on a terminal; in a log (stderr not a terminal, as under SLURM) a plain line at a steady
interval (`MM_REPRO_PROGRESS_SECONDS`, default 60), each refresh written as one line instead of redrawn with carriage
returns; a task shorter than the interval writes nothing there, so a short run's stderr holds only what it has to say
(an error stays one line)."""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

from mm_repro.errors import RunFailed, UserError, unwritable


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
    initial: int = 0,
) -> Any:
    """A tqdm bar over `iterable` (or `total` steps, updated by hand, of which `initial` were done before): drawn on a
    terminal, a line every MM_REPRO_PROGRESS_SECONDS in a log, nothing when not `enabled` (a DDP rank other than the
    first)."""
    terminal = sys.stderr.isatty()
    interval = float(os.environ.get("MM_REPRO_PROGRESS_SECONDS", "60"))
    bar = _Bar(
        iterable,
        total=total,
        initial=initial,
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


def place_problem(exc: OSError) -> str:
    """What is wrong with a place a command could not write, in words: a symbolic link to nowhere, a file where a
    directory must be, or the system's reason (a full disk names the file being written: files.atomic_write)."""
    path = exc.filename
    if path is not None and os.path.islink(path) and not os.path.exists(path):
        return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; make it, or choose elsewhere"
    if exc.errno == errno.EEXIST and path is not None and os.path.exists(path) and not os.path.isdir(path):
        return f"{path} is a file where a directory must be; move it away, or choose another place"
    return f"cannot write {path if path is not None else 'its output'}: {exc.strerror}"


def one_line(exc: BaseException) -> str:
    """An exception as the one line a user reads: ours as they are, others with their type; a place that cannot be
    written as `place_problem` says it."""
    if unwritable(exc):
        return place_problem(exc)  # type: ignore[arg-type]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines) if lines else ""
    if not isinstance(exc, UserError | RunFailed) and not type(exc).__module__.startswith("omegaconf"):
        text = f"{type(exc).__name__}: {text}".rstrip(": ")
    return text.replace("\t", " ")


# Hydra launchers that are extras of mm_repro (pyproject.toml): the config Hydra cannot find when one is missing.
LAUNCHER_EXTRAS = {
    "hydra/launcher/joblib": ("local", "hydra-joblib-launcher"),
    "hydra/launcher/submitit_slurm": ("slurm", "hydra-submitit-launcher"),
    "hydra/launcher/submitit_local": ("slurm", "hydra-submitit-launcher"),
}


def error_line(exc: BaseException) -> str:
    """The one line a refused command prints: a missing launcher plugin names the extra that installs it (Hydra
    reports it as a config it cannot find, an IOError without a file name); an OSError names the file."""
    missing = getattr(exc, "missing_cfg_file", None)  # hydra.errors.MissingConfigException
    if missing in LAUNCHER_EXTRAS:
        extra, package = LAUNCHER_EXTRAS[missing]
        launcher = "local" if extra == "local" else "slurm (or packed_slurm)"
        return (
            f"hydra/launcher={launcher} needs Hydra's {package} plugin, which is not installed: "
            f'pip install "mm_repro[{extra}]" (or pip install {package})'
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        return place_problem(exc)
    return one_line(exc)


def error(message: str) -> None:
    """`error: <message>` on stderr: a refused command's one line, or one failed job's."""
    sys.stderr.write(f"error: {message}\n")


def stderr(message: str) -> None:
    """A line on stderr as it is (a stop line, `interrupted`, a count of failed jobs)."""
    sys.stderr.write(f"{message}\n")


# The fixed-width per-epoch table a run prints (and writes into train.log).
EPOCH_HEADER = (
    f"{'epoch':>7} {'lr':>9} {'train_loss':>11} {'test_err%':>9} {'test_nll':>9} {'img/s':>9} {'time_left':>10}"
)


def time_left(rows: list[dict], epochs_left: int) -> float:
    """Seconds a run still needs: its epochs left at the mean real time of the epochs recorded (0 before any)."""
    return epochs_left * sum(r["seconds"] for r in rows) / len(rows) if rows else 0.0


def epoch_line(row: dict, seconds_left: float) -> str:
    """One row of the epoch table."""
    return (
        f"{row['epoch']:>7d} {row['lr']:>9.5f} {row['train_loss']:>11.5f} {row['test_error']:>9.2f} "
        f"{row['test_nll']:>9.4f} {row['train_images_per_second']:>9.0f} {hms(seconds_left):>10}"
    )


def _model_size(model: Any) -> str:
    """A model's shape in the banner: torchvision's and timm's by architecture, ours by width."""
    return f"arch {model.arch}" if getattr(model, "arch", None) else f"width {model.width}"


def banner(cfg: Any, params: int, images: dict[str, int], device: Any, processes: int, pack: int, run_dir: Any) -> str:
    """The line a run opens with: what it trains, on what data and where."""
    packed = f", packed with {pack - 1} other run(s)" if pack > 1 else ""
    valid = f"{images['valid']:,} validation / " if images.get("valid") else ""
    return (
        f"{cfg.dataset.name} {cfg.model.name} ({_model_size(cfg.model)}, {params:,} params) {cfg.method.name} "
        f"alpha={cfg.method.alpha} layers={list(cfg.method.layers)} seed={cfg.seed} | {images['train']:,} train / "
        f"{valid}{images['test']:,} test images | {device} x {processes} process(es){packed} | {run_dir}"
    )


def final_line(result: dict, path: Any) -> str:
    final, best = result["final"], result["best"]
    return (
        f"final test error {final['test_error']:.2f}% (NLL {final['test_nll']:.4f}); best {best['test_error']:.2f}% at "
        f"epoch {best['epoch']} | {path}"
    )


def complete_line(run_dir: Any, result: dict) -> str:
    """A rerun of a finished run of the same config: nothing to do."""
    final, best = result["final"], result["best"]
    return (
        f"{run_dir} is complete (final test error {final['test_error']:.2f}%, best {best['test_error']:.2f}% at epoch "
        f"{best['epoch']}); nothing to do. Pass train.resume=false to train it again (its records then move to "
        "previous/)"
    )


def stop_line(signum: int | None, epoch: int, step: int, mid_epoch: bool, run_dirs: list[Any]) -> str:
    """The line a stop signal ends a session with (exit 75): where it stopped and how to resume."""
    where = f"at epoch {epoch + 1}, step {step}" if mid_epoch else f"after epoch {epoch}"
    dirs = ", ".join(str(d) for d in run_dirs)
    return f"stopped by signal {signum} {where}; checkpoint written in {dirs}: rerun the same command to resume"
