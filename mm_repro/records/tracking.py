"""Experiment tracking: Weights & Biases (offline by default) or nothing. Records never depend on it.

`wandb` is imported only when `logger=wandb`. The run is always finished, with a non-zero exit code when training
failed. A resumed run continues the same W&B run (its id is kept in the run directory).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from mm_repro.config import LoggerConfig
from mm_repro.errors import UserError


class NullTracker:
    """Tracks nothing (`logger=none`)."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def summary(self, result: dict) -> None:
        pass

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


# W&B reads this variable when its service starts; "false" turns off its error reporting, which otherwise sends
# reports to sentry.io even in offline mode (a maintainer's answer in wandb/wandb issue 6403).
OFFLINE_ENV = ("WANDB_ERROR_REPORTING", "false")


class WandbTracker(NullTracker):
    """One W&B run per training run; the resolved config is its config."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict, name: str, group: str | None) -> None:
        if cfg.mode != "online":  # offline means offline: W&B's error reports (Sentry) go over the network too
            os.environ[OFFLINE_ENV[0]] = OFFLINE_ENV[1]
        import wandb

        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        directory = Path(cfg.dir) if cfg.dir else run_dir
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group or group,
            name=name,
            id=run_id,
            resume="allow",
            reinit="create_new",  # several runs in one process (a packed sweep) each get their own W&B run
            dir=str(directory),
            mode=cfg.mode,
            config=config,
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, result: dict) -> None:
        for key, value in _flatten(result).items():
            self.run.summary[key] = value

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        import wandb

        self.run.log({name: wandb.Table(columns=columns, data=rows)})

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_tracking(cfg: LoggerConfig) -> None:
    """`logger.mode=online` needs W&B credentials (WANDB_API_KEY, or the ~/.netrc entry `wandb login` writes): without
    them wandb.init would fail only after the run directory was taken over. Checked before a run starts."""
    if cfg.name != "wandb" or cfg.mode != "online" or os.environ.get("WANDB_API_KEY"):
        return
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        found = netrc.netrc(os.environ.get("NETRC")).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        found = None
    if not found:
        raise UserError(
            f"logger.mode=online needs W&B credentials for {host}, and none were found (WANDB_API_KEY, or ~/.netrc "
            "from `wandb login`): log in, or keep logger.mode=offline (the default) and `wandb sync` the run later"
        )


def open_tracker(cfg: LoggerConfig, run_dir: Path, config: dict, name: str, group: str | None = None) -> NullTracker:
    """The tracker `logger.name` asks for."""
    if cfg.name == "wandb" and cfg.mode != "disabled":
        return WandbTracker(cfg, run_dir, config, name, group)
    return NullTracker()
