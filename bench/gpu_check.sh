#!/usr/bin/env bash
# The one prepared GPU check (fits one 10-minute device call), for a machine with CUDA:
#   0. install: pip --no-build-isolation (the CUDA sampler builds against the installed torch);
#   1. the RADI-P benchmark (bench/gpu_pairwise.py): B=32, T=10, K=2500, 20 fixed Sinkhorn
#      iterations, fp32, fwd+bwd vs literal / dense / dense torch.compile, peak memory, one
#      Sinkhorn iteration against the MUFU.EX2 limit, a tile sweep, the package defaults;
#   1b. the trainer-integration checks (bench/gpu_pairwise.py --integration, issue 11): a
#      forward+backward of RADI-P (tol=0), RADI-L, both masked, and the classification loss under
#      torch.cuda.set_sync_debug_mode("error"); a CUDA-graph capture of each whose replays equal
#      eager; torch.compile(fullgraph=True) with inductor equal to eager (a separate process: a
#      failed capture may leave a process unusable);
#   2. the CUDA correctness tests, without -x: tests/test_triton_pairwise.py (compiled kernels
#      against the float64 literal reference) and the CUDA sampler tests (the compiled op and its
#      PyTorch port against the CPU op, bit for bit), the Sinkhorn schemes' kernels against the CPU path;
#   3. the training-step benchmark at B=64, N=2500 (RADI-P's overhead over KD);
#   4. with --baseline=REV: bench/ab_timing.py for REV (git archive, installed into /tmp) and for
#      this tree, on the same machine (different H100 hosts differ): per iteration, 20 fixed
#      iterations, the defaults and the training step, side by side (~100 s);
#   5. Nsight Compute on the symmetric Sinkhorn half-step and the loss kernel (when ncu is there and time is left).
# To fit one 10-minute call with --baseline, skip the CUDA sampler build: RADI_FAST_NO_EXT=1.
# Prints every target as PASS/FAIL. Results: JSON + logs in $OUT (when set; the logs also packed in
# $OUT/gpu_check_logs.tgz, since a device call brings back at most 8 files) and bench/results/.
# Usage: bash bench/gpu_check.sh [--no-sweep] [--baseline=REV]   Without a GPU: bash bench/gpu_check.sh --dry-run
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=bench/results
LOGS=${OUT:-$RESULTS}
mkdir -p "$RESULTS" "$LOGS"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
BASELINE=""
declare -a pass=()  # the arguments for bench/gpu_pairwise.py
for a in "$@"; do
  case "$a" in
    --baseline=*) BASELINE=${a#--baseline=} ;;
    *) pass+=("$a") ;;
  esac
done
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

if [[ " $* " == *" --dry-run "* ]]; then
  "$PY" bench/gpu_pairwise.py --out "$LOGS" --dry-run || exit $?
  exec "$PY" bench/gpu_pairwise.py --out "$LOGS" --dry-run --integration
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: torch sees no CUDA device (use --dry-run on a CPU machine)" >&2
  exit 2
fi
{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) uncommitted paths"
  echo "== 0. install"
  MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 timeout 240 "$PY" -m pip install -q --no-index --no-build-isolation \
    --no-deps --use-pep517 -e . 2>&1 | tail -5
  "$PY" -c "import radi_fast, json; print(json.dumps(radi_fast.backend_info()))"
} 2>&1 | tee "$LOGS/gpu_check_setup.log"

echo "== 1. RADI-P benchmark ($(elapsed) s)"
declare -a outs=(--out "$RESULTS")
[[ "$LOGS" != "$RESULTS" ]] && outs+=(--out "$LOGS")
timeout 260 "$PY" bench/gpu_pairwise.py "${outs[@]}" ${pass[@]+"${pass[@]}"} 2>&1 | tee "$LOGS/gpu_check_bench.log"
bench_rc=${PIPESTATUS[0]}

echo "== 1b. integration: sync-free, CUDA graphs, compile fullgraph ($(elapsed) s)"
timeout 180 "$PY" bench/gpu_pairwise.py --integration "${outs[@]}" 2>&1 | tee "$LOGS/gpu_check_integration.log"
integration_rc=${PIPESTATUS[0]}

echo "== 2. CUDA correctness tests ($(elapsed) s)"
RADI_FAST_TEST_DEVICE=cuda timeout 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_triton_pairwise.py \
  2>&1 | tee "$LOGS/gpu_check_pytest.log"
tests_rc=${PIPESTATUS[0]}
RADI_FAST_TEST_DEVICE=cuda timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_sampler_op.py \
  tests/test_sampler_torch.py -k cuda \
  2>&1 | tail -3 | tee -a "$LOGS/gpu_check_pytest.log"
sampler_rc=${PIPESTATUS[0]}
RADI_FAST_TEST_DEVICE=cuda timeout 90 "$PY" -m pytest -q -p no:cacheprovider -rf tests/test_sinkhorn_schemes.py \
  -k triton > "$LOGS/gpu_check_schemes.log" 2>&1
schemes_rc=$?
grep -E "^(FAILED|ERROR|E )|passed|failed" "$LOGS/gpu_check_schemes.log" | head -40 | tee -a "$LOGS/gpu_check_pytest.log"

echo "== 3. training step, B=64, N=2500 ($(elapsed) s)"
RADI_BENCH_JSON="$LOGS/gpu_train_step.json" timeout 120 "$PY" -m pytest -q -p no:cacheprovider \
  bench/test_bench_train_step.py --benchmark-only -k N2500 2>&1 | tail -4 | tee "$LOGS/gpu_check_train.log"
"$PY" - "$LOGS/gpu_train_step.json" <<'EOF' 2>&1 | tee -a "$LOGS/gpu_check_train.log"
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
except Exception as exc:
    print("TARGET n/a   RADI-P adds <= 3 ms per training step over KD (no train-step results:", exc, ")")
    sys.exit(0)
ms = {}
for r in doc["results"]:
    s = r.get("scheme") or r.get("provider")
    t = r.get("median_s", 0) * 1e3
    if s:
        ms[s] = t
print("train step ms:", json.dumps(ms))
if "radi_p" in ms and "kd" in ms:
    d = ms["radi_p"] - ms["kd"]
    print(f"TARGET {'PASS' if d <= 3.0 else 'FAIL'}  RADI-P adds <= 3 ms per training step over KD (adds {d:.2f} ms)")
EOF

if [[ -n "$BASELINE" ]]; then
  echo "== 4. A/B against $BASELINE ($(elapsed) s)"
  rm -rf /tmp/radi_base /tmp/radi_base_site && mkdir -p /tmp/radi_base
  if git archive "$BASELINE" | tar -x -C /tmp/radi_base && (cd /tmp/radi_base && RADI_FAST_NO_EXT=1 "$PY" -m pip install \
       -q --no-index --no-build-isolation --no-deps --use-pep517 --target /tmp/radi_base_site . > /dev/null 2>&1); then
    RADI_AB_ROOT=/tmp/radi_base PYTHONPATH=/tmp/radi_base_site timeout 150 "$PY" bench/ab_timing.py --label baseline \
      --out "$LOGS" > "$LOGS/gpu_check_ab.log" 2>&1
    timeout 150 "$PY" bench/ab_timing.py --label current --out "$LOGS" >> "$LOGS/gpu_check_ab.log" 2>&1
    "$PY" - "$LOGS" "$BASELINE" <<'EOF' 2>&1 | tee -a "$LOGS/gpu_check_ab.log"
import json, os, sys
out, rev = sys.argv[1], sys.argv[2]
try:
    a, b = (json.load(open(os.path.join(out, f"ab_{x}.json"))) for x in ("baseline", "current"))
except Exception as exc:
    sys.exit(f"A/B: no results ({exc})")
print("A/B", rev, "| package files:", a["package_file"], "->", b["package_file"])
for k in ("per_iteration_us", "fixed20_fwd_bwd_ms", "defaults_fwd_bwd_ms", "radi_p_over_kd_ms"):
    if k in a and k in b:
        print(f"  {k:22s} {a[k]:9.3f} -> {b[k]:9.3f}  ({b[k] / a[k]:.2f}x)")
EOF
  else
    echo "A/B: could not install $BASELINE"
  fi
fi


echo "== 5. Nsight Compute, symmetric Sinkhorn half-step and loss kernel ($(elapsed) s)"
if command -v ncu >/dev/null && [[ $(elapsed) -lt 330 ]]; then
  cat > /tmp/radi_ncu_case.py <<'EOF'
import torch
from radi_fast.ops import pairwise_triton as PT
from radi_fast.ops.triton_config import default_config
g = torch.Generator().manual_seed(0)
mc = (torch.randn(32, 1, 2500, generator=g) * 2 + 0.5 * torch.randn(32, 10, 2500, generator=g)).cuda()
cfg = default_config(False, torch.float32)
p = PT.prepare_triton(mc, None, 2500, None, None, cfg)
PT.sinkhorn_potentials_triton(p, 3, 0.0, cfg)
for _ in range(2):
    PT.margin_loss_triton(PT.sorted_student(mc[:, 0], p), p, 1.0, "ot", 0, cfg)
torch.cuda.synchronize()
EOF
  for kernel in sinkhorn_symmetric_half_step margin_ranking; do  # the default path's kernels
    timeout $(( 420 - $(elapsed) )) ncu --section SpeedOfLight --section WarpStateStats --section Occupancy \
      --section ComputeWorkloadAnalysis -k regex:$kernel --launch-skip 1 --launch-count 1 \
      "$PY" /tmp/radi_ncu_case.py >> "$LOGS/gpu_check_ncu.log" 2>&1
  done
  grep -E "Throughput|Busy|Issue|Eligible|Occupancy|Registers|Warp Cycles|Duration|Pipe" "$LOGS/gpu_check_ncu.log" | head -40
else
  echo "skipped (no ncu, or too little time left)"
fi

echo "== summary ($(elapsed) s): bench $bench_rc, integration $integration_rc, tests $tests_rc, sampler tests $sampler_rc, scheme tests $schemes_rc"
grep -h "^TARGET" "$LOGS/gpu_check_bench.log" "$LOGS/gpu_check_integration.log" "$LOGS/gpu_check_train.log" 2>/dev/null
if [[ -n "${OUT:-}" ]]; then  # a device call brings back at most 8 files: the logs travel packed
  tar czf "$OUT/gpu_check_logs.tgz" -C "$LOGS" $(cd "$LOGS" && ls gpu_check_*.log 2>/dev/null) && rm -f "$LOGS"/gpu_check_*.log
fi
[[ $tests_rc -eq 0 && $bench_rc -eq 0 && $integration_rc -eq 0 && $sampler_rc -eq 0 && $schemes_rc -eq 0 ]]
