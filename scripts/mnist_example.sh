#!/usr/bin/env bash
# The worked example of a sweep on the real MNIST (docs/reproducing.md, "A worked example"): ERM, input mixup and
# manifold mixup on section 3.2's fully-connected net at width 256, 5 epochs, 3 seeds (9 runs: about 5 minutes on a
# 2-core CPU, 3.8 of them training, measured in results/mnist_example/), then
# `tables` on it; its summary, learning curves and comparison are what results/mnist_example/ holds. MNIST is read
# from MM_DATA_DIR (default data/: downloaded there on first use).
# Usage: scripts/mnist_example.sh [out dir, default results/mnist_example_mine]
set -euo pipefail
out=${1:-results/mnist_example_mine}
python -m mm_repro train -m dataset=mnist model=mlp_section3_2 model.width=256 train.epochs=5 \
  method=erm,mixup,manifold seed=0,1,2 logger=none hydra.sweep.dir=runs/mnist_example
python -m mm_repro tables runs=runs/mnist_example "out=$out"
