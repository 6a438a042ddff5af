#!/usr/bin/env bash
# One prepared GPU check for the Triton RADI-P kernels (issue 3), for a machine with CUDA:
#   1. the CUDA correctness tests: tests/test_triton_pairwise.py with RADI_FAST_TEST_DEVICE=cuda
#      (the compiled kernels against the float64 literal reference; same tests as the interpreter run);
#   2. the RADI-P benchmark of the issue's Targets (bench/gpu_pairwise.py): B=32, T=10, K=2500,
#      20 Sinkhorn iterations, fp32, forward+backward, radi_fast vs literal vs dense (eager, compiled),
#      peak extra memory, Sinkhorn-iteration time against the exp roofline, a tile sweep.
# Results: JSON with the device name in $OUT (when set) and in bench/results/; logs in $OUT.
# Usage: bash bench/gpu_check.sh [extra gpu_pairwise.py flags, e.g. --skip-literal --rounds 3]
# Without a GPU: bash bench/gpu_check.sh --dry-run   (CPU smoke test of the script's parts)
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=bench/results
LOGS=${OUT:-$RESULTS}
mkdir -p "$RESULTS" "$LOGS"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
PY=${PYTHON:-python3}

if [[ " $* " == *" --dry-run "* ]]; then
  exec "$PY" bench/gpu_pairwise.py --out "$LOGS" "$@"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: torch sees no CUDA device (use --dry-run on a CPU machine)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$LOGS/gpu_check_device.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$LOGS/gpu_check_device.txt"

echo "== 1. CUDA correctness tests"
RADI_FAST_TEST_DEVICE=cuda timeout 400 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_triton_pairwise.py \
  2>&1 | tee "$LOGS/gpu_check_pytest.log"
tests_rc=${PIPESTATUS[0]}
echo "tests exit code: $tests_rc"

echo "== 2. RADI-P benchmark"
declare -a outs=(--out "$RESULTS")
[[ "$LOGS" != "$RESULTS" ]] && outs+=(--out "$LOGS")
timeout 500 "$PY" bench/gpu_pairwise.py "${outs[@]}" "$@" 2>&1 | tee "$LOGS/gpu_check_bench.log"
bench_rc=${PIPESTATUS[0]}
echo "benchmark exit code: $bench_rc"
[[ $tests_rc -eq 0 && $bench_rc -eq 0 ]]
