# Shared by the scripts/table*.sh wrappers: run one paper table's sweep, then regenerate that table.
# Usage from a wrapper: sweep <experiment> [basic|local|slurm] [extra hydra overrides...]
#   basic (default): jobs one after another in this process (one GPU)
#   local: n jobs at a time on this machine (hydra/launcher=local, needs pip install -e ".[local]")
#   slurm: one SLURM job per run (hydra/launcher=slurm, needs pip install -e ".[slurm]"; pass
#          hydra.launcher.partition=<yours>)
# Runs land in runs/<experiment>/...; rerunning the same command resumes unfinished runs and leaves finished ones as
# they are (each says "is complete ...; nothing to do", and no byte of it changes).
set -euo pipefail
sweep() {
  local experiment=$1
  shift
  local launcher=basic
  case "${1:-}" in basic | local | slurm) launcher=$1; shift ;; esac
  python -m mm_repro train -m "experiment=${experiment}" "hydra/launcher=${launcher}" \
    "hydra.sweep.dir=runs/${experiment}" "$@"
  python -m mm_repro tables "runs=runs/${experiment}" "tables=[${TABLE:-$experiment}]"
}
# evaluate_then_table <runs dir> <suite> <table>: `evaluate suite=[<suite>]` on every complete CIFAR-10
# PreActResNet18 run under <runs dir>, then that table (scripts/knn.sh, scripts/pgd.sh).
evaluate_then_table() {
  local runs=$1 suite=$2 table=$3
  for run in $(find "$runs" -path "*cifar10-preactresnet18-*" -name result.json -printf "%h\n"); do
    python -m mm_repro evaluate "run=$run" "suite=[$suite]"
  done
  python -m mm_repro tables "runs=$runs" "tables=[$table]"
}
