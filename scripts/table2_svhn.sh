#!/usr/bin/env bash
# Table 2: SVHN, 3 models x 3 methods x 5 seeds (45 runs), then runs/tables/table2_svhn.*
# Usage: scripts/table2_svhn.sh [basic|local|slurm] [extra hydra overrides, e.g. protocol=paper]
source "$(dirname "$0")/_sweep.sh"
sweep table2_svhn "$@"
