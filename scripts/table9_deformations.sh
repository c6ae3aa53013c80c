#!/usr/bin/env bash
# Tables 4 and 9: train PreActResNet34 on CIFAR-100 (4 columns), evaluate on deformed test sets, then the table
# Usage: scripts/table9_deformations.sh [basic|local|slurm] [extra hydra overrides, e.g. protocol=paper]
source "$(dirname "$0")/_sweep.sh"
sweep table9_deformations "$@"
sweep table9_deformations "$@" method=mixup method.alpha=2.0
for run in $(find runs/table9_deformations -name result.json -printf "%h\n"); do python -m mm_repro evaluate "run=$run" suite=[deformations]; done
python -m mm_repro tables runs=runs/table9_deformations "tables=[table9_deformations]"
