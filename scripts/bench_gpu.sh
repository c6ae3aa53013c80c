#!/usr/bin/env bash
# The GPU benchmark matrix of docs/benchmarks.md: each row writes results/bench/cuda/<row>/bench-cuda.json
# Usage: scripts/bench_gpu.sh [extra bench overrides, e.g. repeats=5]
set -euo pipefail
bench() {
  local row=$1
  shift
  echo "== $row"
  python -m mm_repro bench device=cuda steps=50 warmup=5 repeats=5 images=20000 pack=0 "out=results/bench/cuda/$row" "$@"
}
bench pr18-bs100-fp32 batch_size=100 precision=fp32 "$@"                     # like for like with the official pipeline
bench pr18-bs100-bf16-graphs batch_size=100 precision=bf16 compile=true compile_mode=reduce-overhead "$@"
bench pr18-bs512-bf16 batch_size=512 precision=bf16 compile=true "$@"
bench pr18-bs512-bf16-erm batch_size=512 precision=bf16 compile=true method=erm "$@"   # manifold mixup vs ERM
bench wrn28_10-bs512-bf16 model=wrn28_10 batch_size=512 precision=bf16 compile=true "$@"
bench pr18-bs100-packed8 batch_size=100 precision=fp32 pack=8 "$@"            # 8 packed runs against one (eager; packs are fp32)
