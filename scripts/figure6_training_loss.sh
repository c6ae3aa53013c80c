#!/usr/bin/env bash
# Figure 6: training loss against epochs for mixing at single layers, input mixup and the gradient-blocked variant;
# then the figure (runs/tables/figure6_training_loss.png) and its table of final losses
# Usage: scripts/figure6_training_loss.sh [basic|local|slurm] [extra hydra overrides, e.g. seed=0,1,2]
source "$(dirname "$0")/_sweep.sh"
sweep figure6_training_loss "$@"
sweep figure6_training_loss "$@" method=mixup 'method.layers=[0]'
sweep figure6_training_loss "$@" 'method.layers=[0,1,2]' method.block_gradient=true
