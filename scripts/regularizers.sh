#!/usr/bin/env bash
# The regularizer comparison (PreActResNet50, CIFAR-10, 600 epochs, validation split): no regularization, cutout,
# input mixup, manifold mixup, then dropout; then the table (its "best valid" column is the paper's model selection)
# Usage: scripts/regularizers.sh [basic|local|slurm] [extra hydra overrides, e.g. seed=0,1,2,3,4]
source "$(dirname "$0")/_sweep.sh"
export TABLE=text_regularizers
sweep regularizers "$@"
sweep regularizers "$@" method=erm model.dropout=0.2
