#!/usr/bin/env bash
# Table 7: train the FGSM models (CIFAR-10/100 PreActResNet18, SVHN WRN-28-10), evaluate them, then the table
# Usage: scripts/table7_fgsm.sh [basic|local|slurm] [extra hydra overrides, e.g. protocol=paper]
source "$(dirname "$0")/_sweep.sh"
sweep table7_fgsm "$@"
sweep table7_fgsm "$@" dataset=svhn model=wrn28_10
for run in $(find runs/table7_fgsm -name result.json -printf "%h\n"); do python -m mm_repro evaluate "run=$run" suite=[fgsm]; done
python -m mm_repro tables runs=runs/table7_fgsm "tables=[table7_fgsm]"
