// CUDA implementation of radi_fast::partial_list: ATen side.
//
// 1. ranking: a stable descending at::sort of the scores (padding past lengths[b] set to -inf,
//    -0.0 folded into +0.0), i.e. (score descending, index ascending) as on the CPU; unlike the
//    CPU kernel, no scan for non-finite scores (it would cost a host synchronisation);
// 2. cold keys: one block per row computes the Gumbel key of every rank (philox.h, same bits as
//    the CPU kernel); top-`cold` by `cold` rounds of a block arg-max (cold <= 64) or by a
//    stable descending at::sort of the keys;
// 3. gathers into [B, hot + cold].
// Compiled only into CUDA builds (setup.py). It needs no CUDA headers (the stream comes from
// c10's device-generic interface), so .ci/compile_cuda.sh can syntax-check it against a CPU
// build of torch.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/library.h>

#include <limits>

#include "../partial_list.h"
#include "partial_list_cuda.h"

namespace radi {
namespace {

void check_cuda(int code, const char* what) {
  TORCH_CHECK(code == 0, "partial_list: CUDA error in ", what, ": ", cuda::error_string(code));
}

at::Tensor partial_list_cuda(const at::Tensor& scores_in, int64_t hot, int64_t cold,
                             c10::string_view scheme_name, double alpha, int64_t seed,
                             int64_t offset, const std::optional<at::Tensor>& lengths_in) {
  const int scheme = parse_scheme(std::string_view(scheme_name.data(), scheme_name.size()));
  check_partial_list_args(scores_in, hot, cold, alpha, lengths_in);
  TORCH_CHECK(scores_in.is_cuda(), "partial_list (CUDA kernel): scores must be on a CUDA device");
  const c10::DeviceGuard guard(scores_in.device());
  const int64_t b = scores_in.size(0), n = scores_in.size(1);
  const auto long_opts = scores_in.options().dtype(at::kLong);
  at::Tensor out = at::empty({b, hot + cold}, long_opts);
  if (b == 0) return out;

  at::Tensor lengths;
  at::Tensor scores = at::where(scores_in == 0, at::zeros({}, scores_in.options()), scores_in);
  // No scan of the scores for NaN/inf here: reading its result on the host would synchronise
  // the device on every call (radi_fast checks the values in Python when asked to:
  // radi_fast.set_value_checks / RADI_FAST_VALIDATE=1). The lengths are read (a synchronisation)
  // only when given: radi_fast's losses pass none on CUDA.
  if (lengths_in.has_value()) {
    lengths = lengths_in->to(at::kLong).contiguous();
    check_lengths_values(lengths, hot, cold, n);
    const at::Tensor pad = at::arange(n, long_opts).unsqueeze(0) >= lengths.unsqueeze(1);
    scores = scores.masked_fill(pad, -std::numeric_limits<double>::infinity());
  }
  if (hot + cold == 0) return out;
  const at::Tensor order =
      std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/1, /*descending=*/true));
  if (hot > 0) out.narrow(1, 0, hot).copy_(order.narrow(1, 0, hot));
  if (cold > 0) {
    const int64_t width = n - hot;  // >= every M_b
    at::Tensor keys = at::empty({b, width}, scores_in.options().dtype(at::kDouble));
    void* stream =
        c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).getStream(scores_in.device()).native_handle();
    const int64_t* len_ptr = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
    check_cuda(cuda::launch_cold_keys(keys.data_ptr<double>(), len_ptr, b, n, width, hot, scheme,
                                      alpha, static_cast<uint64_t>(seed),
                                      static_cast<uint64_t>(offset), stream),
               "cold_keys_kernel");
    at::Tensor ranks;
    if (cold <= cuda::kMaxRoundSelect) {
      ranks = at::empty({b, cold}, long_opts);
      check_cuda(cuda::launch_select_topk(keys.data_ptr<double>(), ranks.data_ptr<int64_t>(),
                                          len_ptr, b, n, width, hot, cold, stream),
                 "select_topk_kernel");
    } else {
      // keys are finite for real ranks and -inf past M_b; stable: ties to the lower rank
      ranks = std::get<1>(at::sort(keys, /*stable=*/true, /*dim=*/1, /*descending=*/true))
                  .narrow(1, 0, cold);
    }
    out.narrow(1, hot, cold).copy_(order.gather(1, ranks + hot));
  }
  return out;
}

}  // namespace
}  // namespace radi

TORCH_LIBRARY_IMPL(radi_fast, CUDA, m) { m.impl("partial_list", &radi::partial_list_cuda); }
