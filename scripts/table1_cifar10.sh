#!/usr/bin/env bash
# Table 1(a): CIFAR-10, 3 models x 3 methods x 5 seeds (45 runs), then runs/tables/table1_cifar10.*
# Usage: scripts/table1_cifar10.sh [basic|local|slurm] [extra hydra overrides, e.g. protocol=paper]
source "$(dirname "$0")/_sweep.sh"
sweep table1_cifar10 "$@"
