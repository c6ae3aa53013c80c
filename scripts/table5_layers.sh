#!/usr/bin/env bash
# Table 5: eligible layer sets S (18 manifold runs + 2 ERM runs for S = {}), then runs/tables/table5_layers.*
# Usage: scripts/table5_layers.sh [basic|local|slurm] [extra hydra overrides, e.g. protocol=paper]
source "$(dirname "$0")/_sweep.sh"
TABLE=table5_layers sweep table5_layers "$@"
TABLE=table5_layers sweep table5_layers "$@" method=erm "method.layers=[]"
