"""`python -m mm_repro <command> [overrides]`.

OpenMP's threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE, set before torch loads, unless the user set it): by
default GNU OpenMP spins, and on a machine whose cores are busy with other work a spinning thread steals the core the
work needs. Measured here (docs/performance.md): one manifold-mixup step of a 256-unit MNIST net took 345 ms with
torch's default 2 threads beside a busy process, 6 ms with PASSIVE, 5 ms with OMP_NUM_THREADS=1."""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mm_repro.cli import main  # noqa: E402 (after the OpenMP policy: importing the commands loads torch)


def _quietly_on_a_closed_pipe() -> int:
    """main(), and when the reader of our output closed it (`... --help | head -1`), a quiet end with the status a
    Unix tool killed by SIGPIPE has (141), for every command and whatever it was printing: no traceback."""
    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush goes nowhere
        return 141


sys.exit(_quietly_on_a_closed_pipe())
