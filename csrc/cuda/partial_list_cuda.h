// Host entry points of the CUDA kernels of radi_fast::partial_list (partial_list_cuda.cu).
// Plain C++: no CUDA or ATen types, so that the ATen launcher (partial_list_cuda_launch.cpp)
// and the kernels compile separately, the kernels with nothing but nvcc.
#pragma once

#include <stdint.h>

namespace radi {
namespace cuda {

// Up to this many cold draws the top-k runs in one kernel (one block per row, `cold` rounds
// of a block-wide arg-max); above it the launcher sorts the keys with at::sort.
constexpr int64_t kMaxRoundSelect = 64;

// keys[b, j] (row pitch `width` >= max M_b) = Gumbel key of rank j + 1 of row b for
// j < M_b = L_b - hot, -inf for M_b <= j < width. One block per row. lengths may be null
// (L_b = n). Returns a cudaError_t value (0 on success).
int launch_cold_keys(double* keys, const int64_t* lengths, int64_t batch, int64_t n,
                     int64_t width, int64_t hot, int scheme, double alpha, uint64_t seed,
                     uint64_t offset, void* stream);

// ranks[b, c] (c < cold) = 0-based position of the c-th largest key of row b (ties to the
// lower position), in decreasing key order. Consumes keys (selected entries become -inf).
// One block per row; cold <= kMaxRoundSelect. Returns a cudaError_t value.
int launch_select_topk(double* keys, int64_t* ranks, const int64_t* lengths, int64_t batch,
                       int64_t n, int64_t width, int64_t hot, int64_t cold, void* stream);

const char* error_string(int code);

}  // namespace cuda
}  // namespace radi
