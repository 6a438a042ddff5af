#!/usr/bin/env bash
# Compile the CUDA side of radi_fast._C with the machine's nvcc for sm_90, without a GPU, so
# that a CUDA compile error fails CI even on a CPU-only machine with a CPU build of torch.
#
#  1. csrc/cuda/*.cu (the kernels: Philox keys + block top-k; they include only the CUDA
#     runtime and csrc/philox.h): full nvcc compile to sm_90 SASS, -arch=sm_90 -c;
#  2. csrc/cuda/*.cpp (the ATen launcher registered under the CUDA dispatch key; it needs no
#     CUDA header): full host compile against torch's headers with -DRADI_WITH_CUDA=1, as in a
#     CUDAExtension build. Linking needs a CUDA build of torch and is left to setup.py.
#
# Exits non-zero on the first compile error. Env: NVCC (default: nvcc on PATH, then
# /usr/local/cuda/bin/nvcc), CXX (default g++), PYTHON (default python),
# RADI_FAST_SKIP_CUDA_COMPILE=1 to skip (prints why).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${RADI_FAST_SKIP_CUDA_COMPILE:-0}" == "1" ]]; then
  echo "compile_cuda: skipped (RADI_FAST_SKIP_CUDA_COMPILE=1)"
  exit 0
fi
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
if [[ ! -x "$NVCC" ]]; then
  echo "compile_cuda: nvcc not found (set NVCC, or RADI_FAST_SKIP_CUDA_COMPILE=1 to skip)" >&2
  exit 1
fi
PYTHON="${PYTHON:-python}"
CXX="${CXX:-g++}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

mapfile -t TORCH_INC < <("$PYTHON" -c "from torch.utils.cpp_extension import include_paths
for p in include_paths(): print('-I' + p)")
PY_INC="-I$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")"
ABI="$("$PYTHON" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")"

shopt -s nullglob
cu_files=(csrc/cuda/*.cu)
cpp_files=(csrc/cuda/*.cpp)
if (( ${#cu_files[@]} == 0 )); then
  echo "compile_cuda: no csrc/cuda/*.cu files" >&2
  exit 1
fi

echo "compile_cuda: $("$NVCC" --version | tail -n 1)"
for f in "${cu_files[@]}"; do
  echo "compile_cuda: nvcc -arch=sm_90 -c $f"
  "$NVCC" -std=c++20 -O3 -fmad=false -arch=sm_90 -Xptxas=-warn-spills --resource-usage \
    -Icsrc "${TORCH_INC[@]}" -c "$f" -o "$OUT/$(basename "$f").o"
done
for f in "${cpp_files[@]}"; do
  echo "compile_cuda: $CXX -c $f (ATen launcher, -DRADI_WITH_CUDA=1)"
  "$CXX" -std=c++20 -O2 -fPIC -ffp-contract=off -D_GLIBCXX_USE_CXX11_ABI="$ABI" \
    -DRADI_WITH_CUDA=1 -DTORCH_EXTENSION_NAME=_C -Icsrc "${TORCH_INC[@]}" "$PY_INC" \
    -c "$f" -o "$OUT/$(basename "$f").o"
done
echo "compile_cuda: OK (${#cu_files[@]} .cu for sm_90, ${#cpp_files[@]} launcher .cpp)"
