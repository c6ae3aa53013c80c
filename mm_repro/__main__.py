"""`python -m mm_repro <command> [overrides]`.

OpenMP's threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE, set before torch loads, unless the user set it): by
default GNU OpenMP spins, and on a machine whose cores are busy with other work a spinning thread steals the core the
work needs. Measured here (docs/performance.md): one manifold-mixup step of a 256-unit MNIST net took 345 ms with
torch's default 2 threads beside a busy process, 6 ms with PASSIVE, 5 ms with OMP_NUM_THREADS=1."""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mm_repro.cli import main  # noqa: E402 (after the OpenMP policy: importing the commands loads torch)

sys.exit(main())
