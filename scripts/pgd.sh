#!/usr/bin/env bash
# Appendix D's PGD check (and a bounded PGD-20): the Table 7 CIFAR-10 runs (scripts/table7_fgsm.sh trains them),
# evaluated with suite=[pgd], then the table
# Usage: scripts/pgd.sh [runs directory, default runs/table7_fgsm]
set -euo pipefail
runs=${1:-runs/table7_fgsm}
for run in $(find "$runs" -path "*cifar10-preactresnet18-*" -name result.json -printf "%h\n"); do
  python -m mm_repro evaluate "run=$run" suite=[pgd]
done
python -m mm_repro tables "runs=$runs" "tables=[appendix_d_pgd]"
