// CUDA kernels of radi_fast::partial_list: the cold-list Gumbel keys and their top-k.
// Self-contained (CUDA runtime + ../philox.h only): .ci/compile_cuda.sh compiles this file
// with plain nvcc for sm_90 even where torch has no CUDA headers. The ATen side (ranking sort,
// gathers, registration under the CUDA key) is partial_list_cuda_launch.cpp.
//
// The keys use the same Philox counters and the same portable arithmetic as the CPU kernel
// (philox.h), so both devices select the same ranks bit for bit.
#include <cuda_runtime.h>
#include <stdint.h>

#include "../philox.h"
#include "partial_list_cuda.h"

namespace radi {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;

__device__ __forceinline__ double neg_inf() { return __longlong_as_double(0xFFF0000000000000LL); }

__global__ void __launch_bounds__(kThreads)
    cold_keys_kernel(double* __restrict__ keys, const int64_t* __restrict__ lengths,
                     int64_t batch, int64_t n, int64_t width, int64_t hot, int scheme,
                     double alpha, uint64_t seed, uint64_t offset) {
  for (int64_t row = blockIdx.x; row < batch; row += gridDim.x) {
    const int64_t len = lengths ? lengths[row] : n;
    const int64_t m = len - hot;
    double* k = keys + row * width;
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
      k[j] = j < m ? cold_key(scheme, alpha, seed, offset, static_cast<uint32_t>(row), j + 1)
                   : neg_inf();
    }
  }
}

__device__ __forceinline__ void take_better(double& key, long long& pos, double other_key,
                                            long long other_pos) {
  if (other_key > key || (other_key == key && other_pos < pos)) {
    key = other_key;
    pos = other_pos;
  }
}

__device__ __forceinline__ void warp_argmax(double& key, long long& pos) {
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) {
    const double k = __shfl_down_sync(kFullMask, key, delta);
    const long long p = __shfl_down_sync(kFullMask, pos, delta);
    take_better(key, pos, k, p);
  }
}

__global__ void __launch_bounds__(kThreads)
    select_topk_kernel(double* __restrict__ keys, int64_t* __restrict__ ranks,
                       const int64_t* __restrict__ lengths, int64_t batch, int64_t n,
                       int64_t width, int64_t hot, int64_t cold) {
  __shared__ double s_key[kWarps];
  __shared__ long long s_pos[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr long long kNoPos = 0x7FFFFFFFFFFFFFFFLL;
  for (int64_t row = blockIdx.x; row < batch; row += gridDim.x) {
    const int64_t len = lengths ? lengths[row] : n;
    const int64_t m = len - hot;
    double* k = keys + row * width;
    for (int64_t c = 0; c < cold; ++c) {
      // Selected entries are -inf and every real key is finite (cold <= m), so a -inf never
      // wins the block-wide arg-max.
      double best = neg_inf();
      long long best_pos = kNoPos;
      for (int64_t j = threadIdx.x; j < m; j += blockDim.x) take_better(best, best_pos, k[j], j);
      warp_argmax(best, best_pos);
      if (lane == 0) {
        s_key[warp] = best;
        s_pos[warp] = best_pos;
      }
      __syncthreads();
      if (warp == 0) {
        best = lane < kWarps ? s_key[lane] : neg_inf();
        best_pos = lane < kWarps ? s_pos[lane] : kNoPos;
        warp_argmax(best, best_pos);
        if (lane == 0) {
          ranks[row * cold + c] = best_pos;
          k[best_pos] = neg_inf();
        }
      }
      __syncthreads();  // the -inf mark and s_key/s_pos reuse are visible to the next round
    }
  }
}

int grid_for(int64_t batch) {
  const int64_t max_grid = 1 << 20;
  return static_cast<int>(batch < max_grid ? batch : max_grid);
}

}  // namespace

int launch_cold_keys(double* keys, const int64_t* lengths, int64_t batch, int64_t n,
                     int64_t width, int64_t hot, int scheme, double alpha, uint64_t seed,
                     uint64_t offset, void* stream) {
  if (batch <= 0 || width <= 0) return 0;
  cold_keys_kernel<<<grid_for(batch), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      keys, lengths, batch, n, width, hot, scheme, alpha, seed, offset);
  return static_cast<int>(cudaGetLastError());
}

int launch_select_topk(double* keys, int64_t* ranks, const int64_t* lengths, int64_t batch,
                       int64_t n, int64_t width, int64_t hot, int64_t cold, void* stream) {
  if (batch <= 0 || cold <= 0) return 0;
  select_topk_kernel<<<grid_for(batch), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      keys, ranks, lengths, batch, n, width, hot, cold);
  return static_cast<int>(cudaGetLastError());
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace cuda
}  // namespace radi
