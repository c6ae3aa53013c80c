#!/usr/bin/env bash
# Table 6: alpha sweep for input and manifold mixup on CIFAR-10 (12 runs), then runs/tables/table6_alpha.*
# Usage: scripts/table6_alpha.sh [basic|local|slurm] [extra hydra overrides, e.g. protocol=paper]
source "$(dirname "$0")/_sweep.sh"
sweep table6_alpha "$@"
