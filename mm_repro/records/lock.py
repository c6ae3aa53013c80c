"""One process per run directory: an exclusive flock on `<run dir>/.lock`, released by the kernel on any exit."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mm_repro.errors import UserError
from mm_repro.records.layout import LOCK


class RunLock:
    """An exclusive lock on a run directory (flock on `<run dir>/.lock`): one process trains a run at a time. The
    kernel releases it when the process ends, even by SIGKILL, so a crash never leaves a stale lock."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None
        self.signed = False  # the run is taken over: this process's pid is in the lock file

    def holder(self) -> str | None:
        """The pid written by the process that holds the lock, if another process holds it."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.path.read_text().strip() or "?"
        finally:
            os.close(fd)
        return None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "?"
            raise UserError(
                f"run directory {self.path.parent} is in use by another training process (pid {holder}); wait for it "
                "to finish or stop it, or use another hydra.run.dir"
            ) from None
        self.fd = fd

    def sign(self) -> None:
        """Write this process's pid into the lock file (once the run is taken over: a refused start writes nothing)."""
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        self.signed = True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
