#!/usr/bin/env bash
# Table 3: PreActResNet18 on Tiny-ImageNet-200 (input and manifold mixup at four alphas, and No Mixup), then the table
# Usage: scripts/table3_tiny_imagenet.sh [basic|local|slurm] [extra hydra overrides, e.g. seed=0,1,2]
source "$(dirname "$0")/_sweep.sh"
sweep table3_tiny_imagenet "$@"
sweep table3_tiny_imagenet "$@" method=erm method.alpha=0.0  # ERM reads no alpha: one run, not four
