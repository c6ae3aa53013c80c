#!/usr/bin/env bash
# Table 1(b): CIFAR-100, 3 models x 3 methods x 5 seeds (45 runs), then runs/tables/table1_cifar100.*
# Usage: scripts/table1_cifar100.sh [basic|local|slurm] [extra hydra overrides, e.g. protocol=paper]
source "$(dirname "$0")/_sweep.sh"
sweep table1_cifar100 "$@"
