"""`python -m mm_repro <command> [overrides]`."""

import sys

from mm_repro.cli import main

sys.exit(main())
