#!/usr/bin/env bash
# k-NN on learned features (CIFAR-10, PreActResNet18): the Table 1(a) runs (scripts/table1_cifar10.sh trains them),
# evaluated with suite=[knn], then the table
# Usage: scripts/knn.sh [runs directory, default runs/table1_cifar10]
source "$(dirname "$0")/_sweep.sh"
evaluate_then_table "${1:-runs/table1_cifar10}" knn text_knn
