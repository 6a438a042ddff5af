// Declarations shared by the CPU kernel (partial_list.cpp) and the CUDA launcher
// (cuda/partial_list_cuda_launch.cpp) of radi_fast::partial_list.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <string_view>

namespace radi {

// "exp" -> kSchemeExp, "zipf" -> kSchemeZipf, "random" -> kSchemeRandom; TORCH_CHECK otherwise.
int parse_scheme(std::string_view scheme);

// Checks every argument that can be checked without reading tensor data on the device:
// scores 2-D floating, hot/cold >= 0, hot + cold <= N, alpha finite >= 0, sizes fit the 32-bit
// Philox counter words, lengths 1-D of size B, integer, on the scores' device.
void check_partial_list_args(const at::Tensor& scores, int64_t hot, int64_t cold, double alpha,
                             const std::optional<at::Tensor>& lengths);

// Checks the values of lengths (already int64): hot + cold <= lengths[b] <= N.
void check_lengths_values(const at::Tensor& lengths64, int64_t hot, int64_t cold, int64_t n);

}  // namespace radi
