#!/usr/bin/env bash
# k-NN on learned features (CIFAR-10, PreActResNet18): the Table 1(a) runs (scripts/table1_cifar10.sh trains them),
# evaluated with suite=[knn], then the table
# Usage: scripts/knn.sh [runs directory, default runs/table1_cifar10]
set -euo pipefail
runs=${1:-runs/table1_cifar10}
for run in $(find "$runs" -path "*cifar10-preactresnet18-*" -name result.json -printf "%h\n"); do
  python -m mm_repro evaluate "run=$run" suite=[knn]
done
python -m mm_repro tables "runs=$runs" "tables=[text_knn]"
