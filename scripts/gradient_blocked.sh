#!/usr/bin/env bash
# Manifold mixup with the gradient blocked at the mixing layer (CIFAR-10, PreActResNet18), then its row beside Table 1's
# Usage: scripts/gradient_blocked.sh [basic|local|slurm] [extra hydra overrides, e.g. seed=0,1,2]
source "$(dirname "$0")/_sweep.sh"
export TABLE=text_gradient_blocked
sweep gradient_blocked "$@"
