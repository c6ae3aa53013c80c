#!/usr/bin/env bash
# Appendix D's PGD check (and a bounded PGD-20): the Table 7 CIFAR-10 runs (scripts/table7_fgsm.sh trains them),
# evaluated with suite=[pgd], then the table
# Usage: scripts/pgd.sh [runs directory, default runs/table7_fgsm]
source "$(dirname "$0")/_sweep.sh"
evaluate_then_table "${1:-runs/table7_fgsm}" pgd appendix_d_pgd
