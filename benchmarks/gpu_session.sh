#!/usr/bin/env bash
# One prepared script for a lent GPU machine (its image has torch CUDA, lightning, transformers, einops,
# accelerate, numpy 2, pyarrow; wheels for the rest are carried in $WHEELS, default shared/wheels):
#   bash benchmarks/gpu_session.sh            # tests/gpu, then benchmarks/gpu.py; logs and JSON into $OUT
# Dry-run it on a CPU machine first: GENIE_GPU_TESTS_DEVICE=cpu GPU_BENCH_ARGS="--device cpu --quick" bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-session}
mkdir -p "$OUT"
WHEELS=${WHEELS:-shared/wheels}
if [ -d "$WHEELS" ]; then
  python -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl >"$OUT/pip.log" 2>&1 || echo "pip: see $OUT/pip.log"
fi
python -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/pip.log" 2>&1 || true
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
start=$(date +%s)
timeout 300 python -m pytest -q tests/gpu >"$OUT/tests_gpu.log" 2>&1; echo "tests/gpu exit $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
tail -5 "$OUT/tests_gpu.log" | tee -a "$OUT/summary.txt"
start=$(date +%s)
timeout 360 python benchmarks/gpu.py ${GPU_BENCH_ARGS:-} >"$OUT/gpu_bench.log" 2>&1; echo "benchmarks/gpu.py exit $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
cp benchmarks/results/gpu_*.json "$OUT/" 2>/dev/null || true
tail -15 "$OUT/gpu_bench.log" | tee -a "$OUT/summary.txt"
