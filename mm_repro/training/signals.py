"""Stop signals (docs/trust.md): SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 end a run at the next step
with its checkpoints written, and SLURM's time-limit warning is then handed to submitit, which requeues the job."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

from mm_repro.errors import Preempted


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
