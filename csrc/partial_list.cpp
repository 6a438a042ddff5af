// radi_fast::partial_list: the hot + cold sub-list sampler of RADI-L (Liang et al., CVPR 2024,
// sec. 3.3). Schema, argument checks, CPU kernel, test helpers and the radi_fast._C module.
//
// Semantics (documented in docs/sampler.md):
//   * ranking of row b: its first L_b = lengths[b] (or N) scores sorted by (score descending,
//     column index ascending); -0.0 counts as +0.0;
//   * output [B, hot + cold] int64 column indices: the first `hot` of the ranking, then `cold`
//     draws without replacement from the remaining M_b = L_b - hot answers with probability by
//     rank r = 1..M_b: exp p_r ~ exp(-alpha r), zipf p_r ~ r^-alpha, random uniform;
//   * the draws are a Gumbel-top-k: key(r) = log p_r + G_r, G_r = -log(-log u_r),
//     u_r = Philox4x32-10(seed, offset, row b, position r) (see philox.h); the cold list is the
//     `cold` ranks with the largest keys, in decreasing key order (= sequential draw order),
//     ties to the lower rank.
//
// The CPU kernel gives exactly the top-k of those keys, but avoids computing most of them: a
// rank whose 1 - u already proves that its key falls below the current k-th key is skipped
// before any logarithm (with a safety margin far above rounding error), and for decreasing
// laws the scan stops once log p_r + max Gumbel is below the k-th key. The ranking is a
// selection, not a sort: nth_element up to the deepest needed position, a sort of the hot
// prefix, and a multi-select of the cold positions.
#include "partial_list.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "philox.h"

namespace radi {

// --------------------------------------------------------------------------------------------
// Argument checks.

int parse_scheme(std::string_view scheme) {
  if (scheme == "exp") return kSchemeExp;
  if (scheme == "zipf") return kSchemeZipf;
  if (scheme == "random") return kSchemeRandom;
  TORCH_CHECK(false, "partial_list: unknown scheme '", std::string(scheme),
              "'; expected one of 'exp', 'zipf', 'random'");
  return -1;
}

void check_partial_list_args(const at::Tensor& scores, int64_t hot, int64_t cold, double alpha,
                             const std::optional<at::Tensor>& lengths) {
  TORCH_CHECK(scores.dim() == 2, "partial_list: scores must be 2-D [B, N], got shape ",
              scores.sizes());
  TORCH_CHECK(at::isFloatingType(scores.scalar_type()),
              "partial_list: scores must be a floating tensor, got ", scores.scalar_type());
  const int64_t b = scores.size(0), n = scores.size(1);
  TORCH_CHECK(hot >= 0, "partial_list: hot must be >= 0, got ", hot);
  TORCH_CHECK(cold >= 0, "partial_list: cold must be >= 0, got ", cold);
  TORCH_CHECK(hot + cold <= n, "partial_list: hot + cold (", hot, " + ", cold,
              ") exceeds the number of answers N = ", n);
  TORCH_CHECK(std::isfinite(alpha) && alpha >= 0.0,
              "partial_list: alpha must be finite and >= 0, got ", alpha);
  TORCH_CHECK(b <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()),
              "partial_list: batch size must be < 2^32 (Philox counter word), got ", b);
  TORCH_CHECK(n <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()),
              "partial_list: N must be < 2^32 (Philox counter word), got ", n);
  if (lengths.has_value()) {
    const at::Tensor& len = *lengths;
    TORCH_CHECK(len.dim() == 1 && len.size(0) == b,
                "partial_list: lengths must be 1-D of size B = ", b, ", got shape ", len.sizes());
    TORCH_CHECK(at::isIntegralType(len.scalar_type(), /*includeBool=*/false),
                "partial_list: lengths must be an integer tensor, got ", len.scalar_type());
    TORCH_CHECK(len.device() == scores.device(), "partial_list: lengths is on ", len.device(),
                " but scores is on ", scores.device());
  }
}

void check_lengths_values(const at::Tensor& lengths64, int64_t hot, int64_t cold, int64_t n) {
  if (lengths64.numel() == 0) return;
  const int64_t lo = lengths64.min().item<int64_t>();
  const int64_t hi = lengths64.max().item<int64_t>();
  TORCH_CHECK(hi <= n, "partial_list: lengths must be <= N = ", n, ", got max(lengths) = ", hi);
  TORCH_CHECK(lo >= hot + cold, "partial_list: hot + cold (", hot + cold,
              ") must be <= min(lengths), got min(lengths) = ", lo);
}

namespace {

// --------------------------------------------------------------------------------------------
// Cold ranks: exact Gumbel-top-k over r = 1..m, in draw order.

struct Cand {
  double key;
  int64_t r;
};
struct CandBefore {
  bool operator()(const Cand& a, const Cand& b) const { return key_before(a.key, a.r, b.key, b.r); }
};

// Writes the `cold` selected ranks (1-based, draw order) to ranks_out. heap is scratch.
void select_cold_ranks(int scheme, double alpha, uint64_t seed, uint64_t offset, uint32_t row,
                       int64_t m, int64_t cold, std::vector<Cand>& heap, int64_t* ranks_out) {
  heap.clear();
  if (cold <= 0) return;
  const CandBefore before;
  // std heap with comparator "before": the front is the candidate that comes last (the k-th).
  int64_t r = 1;
  for (; r <= m && static_cast<int64_t>(heap.size()) < cold; ++r) {
    heap.push_back({cold_key(scheme, alpha, seed, offset, row, r), r});
    std::push_heap(heap.begin(), heap.end(), before);
  }
  constexpr int64_t kRefreshEvery = 32;
  double tau = heap.front().key;
  uint64_t reject_q_above = std::numeric_limits<uint64_t>::max();
  bool refresh = true;
  int64_t next_refresh = r;
  uint32_t blocks[kPhiloxLanes][4];
  uint32_t first_block = 0;
  bool have_blocks = false;
  for (; r <= m; ++r) {
    if (refresh || r >= next_refresh) {
      // log p is non-increasing in r, so the bound computed at r holds for every later rank.
      const double lp = rank_log_weight(scheme, alpha, r);
      if (lp + kGumbelMax < tau) break;  // no later key can reach the k-th key
      // key(r') < tau whenever -log u > exp(lp - tau). With w = 1 - u = (q + 1/2) 2^-52,
      // q = 2^52 - 1 - bits, -log u = -log(1 - w) >= w, so q > ceil(2^52 x) with
      // x = exp(lp - tau + delta) (1 + 1e-6) implies it, with a margin (delta, 1e-6) far
      // larger than the rounding error of the computed keys and of x itself.
      const double delta = 1e-6 + 1e-9 * (std::fabs(lp) + std::fabs(tau));
      const double x = std::exp(lp - tau + delta) * (1.0 + 1e-6);
      reject_q_above = x >= 1.0 ? std::numeric_limits<uint64_t>::max()
                                : static_cast<uint64_t>(std::ceil(std::ldexp(x, 52)));
      refresh = false;
      next_refresh = r + kRefreshEvery;
    }
    const uint32_t pos = static_cast<uint32_t>(r);
    const uint32_t block = pos >> 1;  // ranks 2k and 2k + 1 share one Philox call
    if (!have_blocks || block - first_block >= static_cast<uint32_t>(kPhiloxLanes)) {
      first_block = block;
      have_blocks = true;
      philox_blocks(seed, offset, row, first_block, blocks);
    }
    const uint64_t bits = bits52_from_block(blocks[block - first_block], pos);
    if (kBits52Max - bits > reject_q_above) continue;
    const double key = gumbel_key(rank_log_weight(scheme, alpha, r), bits52_to_uniform(bits));
    const Cand& worst = heap.front();
    if (key_before(key, r, worst.key, worst.r)) {
      std::pop_heap(heap.begin(), heap.end(), before);
      heap.back() = {key, r};
      std::push_heap(heap.begin(), heap.end(), before);
      tau = heap.front().key;
      refresh = true;
    }
  }
  std::sort(heap.begin(), heap.end(), before);
  for (int64_t c = 0; c < cold; ++c) ranks_out[c] = heap[c].r;
}

// --------------------------------------------------------------------------------------------
// Ranking keys: ascending order of the key = (score descending, index ascending).

inline uint32_t desc_bits(float x) {
  x = x + 0.0f;  // -0.0 -> +0.0
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  const uint32_t asc = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return ~asc;
}
inline uint64_t desc_bits(double x) {
  x = x + 0.0;
  uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  const uint64_t asc = (b & 0x8000000000000000ull) ? ~b : (b | 0x8000000000000000ull);
  return ~asc;
}

// Order-preserving buckets of the ranking keys (their top bits: sign, exponent, 2-3 mantissa
// bits) narrow the selection to a few small ranges.
constexpr int kBucketBits = 11;
constexpr int kBuckets = 1 << kBucketBits;
constexpr int64_t kRadixMinLength = 1024;  // shorter rows: plain nth_element

struct Key32 {  // fp32 / fp16 / bf16 scores: one 64-bit integer compare
  uint64_t v;
  static Key32 make(float x, int64_t i) {
    return {(static_cast<uint64_t>(desc_bits(x)) << 32) | static_cast<uint64_t>(i)};
  }
  int64_t index() const { return static_cast<int64_t>(v & 0xFFFFFFFFull); }
  uint32_t bucket() const { return static_cast<uint32_t>(v >> (64 - kBucketBits)); }
  bool operator<(const Key32& o) const { return v < o.v; }
};
struct Key64 {  // fp64 scores
  uint64_t s;
  uint32_t i;
  static Key64 make(double x, int64_t i) { return {desc_bits(x), static_cast<uint32_t>(i)}; }
  int64_t index() const { return static_cast<int64_t>(i); }
  uint32_t bucket() const { return static_cast<uint32_t>(s >> (64 - kBucketBits)); }
  bool operator<(const Key64& o) const { return s < o.s || (s == o.s && i < o.i); }
};

template <typename K>
void multiselect(K* a, int64_t lo, int64_t hi, const int64_t* targets, int64_t nt) {
  // After the call a[t] holds the element of order t of a[lo, hi) for every target t
  // (targets sorted ascending, distinct, inside [lo, hi)).
  while (nt > 0) {
    const int64_t mid = nt / 2;
    const int64_t p = targets[mid];
    std::nth_element(a + lo, a + p, a + hi);
    multiselect(a, lo, p, targets, mid);
    lo = p + 1;
    targets += mid + 1;
    nt -= mid + 1;
  }
}

// Scratch of select_positions, one per thread.
template <typename K>
struct SelectScratch {
  std::vector<K> tmp;
  std::vector<int32_t> start, fill;
  std::vector<uint8_t> need;
  explicit SelectScratch(int64_t n)
      : tmp(static_cast<size_t>(n)), start(kBuckets + 1), fill(kBuckets), need(kBuckets) {}
};

// Orders just enough of the ranking keys a[0, len): on return, with `res` the returned array,
// res[0, hot) are the `hot` smallest keys in order and res[t] is the key of order t for every
// target t (targets: sorted, distinct, in [hot, len)). Small rows: nth_element on a. Larger
// rows: one histogram pass over kBuckets order-preserving buckets, one pass copying only the
// buckets that hold a needed position to their final ranges in scratch.tmp, then selection
// inside those (usually small) ranges.
template <typename K>
const K* select_positions(K* a, int64_t len, int64_t hot, const int64_t* targets, int64_t nt,
                          SelectScratch<K>& scratch) {
  if (hot + nt == 0) return a;
  const int64_t deepest = nt > 0 ? targets[nt - 1] : hot - 1;
  if (len < kRadixMinLength) {
    std::nth_element(a, a + deepest, a + len);
    if (hot > 0) {
      if (hot < deepest) std::nth_element(a, a + hot, a + deepest);
      std::sort(a, a + hot);
    }
    if (nt > 1) multiselect(a, hot, deepest, targets, nt - 1);  // deepest is in place
    return a;
  }
  int32_t* start = scratch.start.data();
  int32_t* fill = scratch.fill.data();
  uint8_t* need = scratch.need.data();
  std::fill(fill, fill + kBuckets, 0);
  for (int64_t j = 0; j < len; ++j) ++fill[a[j].bucket()];
  int32_t acc = 0;
  for (int b = 0; b < kBuckets; ++b) {
    start[b] = acc;
    acc += fill[b];
  }
  start[kBuckets] = acc;
  std::fill(need, need + kBuckets, 0);
  int hot_bucket = -1;  // bucket holding position hot - 1
  int b = 0;
  if (hot > 0) {
    while (start[b + 1] < hot) need[b++] = 1;  // buckets entirely inside the hot list
    need[b] = 1;
    hot_bucket = b;
  }
  for (int64_t i = 0; i < nt; ++i) {
    while (start[b + 1] <= targets[i]) ++b;
    need[b] = 1;
  }
  for (int c = 0; c < kBuckets; ++c) fill[c] = start[c];
  K* tmp = scratch.tmp.data();
  for (int64_t j = 0; j < len; ++j) {
    const uint32_t c = a[j].bucket();
    if (need[c]) tmp[fill[c]++] = a[j];
  }
  if (hot > 0) {
    const int64_t end = start[hot_bucket + 1];
    if (hot < end) std::nth_element(tmp, tmp + hot, tmp + end);
    std::sort(tmp, tmp + hot);
  }
  b = 0;
  for (int64_t i = 0; i < nt;) {
    while (start[b + 1] <= targets[i]) ++b;
    int64_t j = i;
    while (j < nt && targets[j] < start[b + 1]) ++j;
    const int64_t lo = b == hot_bucket ? hot : start[b];  // the hot list is already split off
    multiselect(tmp, lo, static_cast<int64_t>(start[b + 1]), targets + i, j - i);
    i = j;
  }
  return tmp;
}

template <typename scalar_t, typename K, typename acc_t>
void partial_list_cpu_rows(const scalar_t* scores, int64_t n, const int64_t* lengths, int64_t hot,
                           int64_t cold, int scheme, double alpha, uint64_t seed, uint64_t offset,
                           int64_t* out, int64_t row_begin, int64_t row_end,
                           std::atomic<bool>& nonfinite) {
  std::vector<K> keys(static_cast<size_t>(n));
  std::vector<Cand> heap;
  heap.reserve(static_cast<size_t>(cold));
  std::vector<int64_t> ranks(static_cast<size_t>(cold)), targets(static_cast<size_t>(cold));
  SelectScratch<K> scratch(n);
  const int64_t width = hot + cold;
  for (int64_t b = row_begin; b < row_end; ++b) {
    const int64_t len = lengths ? lengths[b] : n;
    const scalar_t* row = scores + b * n;
    bool finite = true;
    for (int64_t j = 0; j < len; ++j) {
      const acc_t v = static_cast<acc_t>(row[j]);
      finite &= std::isfinite(v);
      keys[j] = K::make(v, j);
    }
    if (!finite) {
      nonfinite.store(true, std::memory_order_relaxed);
      continue;
    }
    if (width == 0) continue;
    const int64_t m = len - hot;
    select_cold_ranks(scheme, alpha, seed, offset, static_cast<uint32_t>(b), m, cold, heap,
                      ranks.data());
    for (int64_t c = 0; c < cold; ++c) targets[c] = hot + ranks[c] - 1;
    std::sort(targets.begin(), targets.end());
    const K* a = select_positions(keys.data(), len, hot, targets.data(), cold, scratch);
    int64_t* o = out + b * width;
    for (int64_t j = 0; j < hot; ++j) o[j] = a[j].index();
    for (int64_t c = 0; c < cold; ++c) o[hot + c] = a[hot + ranks[c] - 1].index();
  }
}

at::Tensor partial_list_cpu(const at::Tensor& scores_in, int64_t hot, int64_t cold,
                            c10::string_view scheme_name, double alpha, int64_t seed,
                            int64_t offset, const std::optional<at::Tensor>& lengths_in) {
  const int scheme = parse_scheme(std::string_view(scheme_name.data(), scheme_name.size()));
  check_partial_list_args(scores_in, hot, cold, alpha, lengths_in);
  TORCH_CHECK(scores_in.device().is_cpu(), "partial_list (CPU kernel): scores must be on the CPU");
  const int64_t b = scores_in.size(0), n = scores_in.size(1);
  at::Tensor lengths;
  if (lengths_in.has_value()) {
    lengths = lengths_in->to(at::kLong).contiguous();
    check_lengths_values(lengths, hot, cold, n);
  }
  const at::Tensor scores = scores_in.contiguous();
  at::Tensor out = at::empty({b, hot + cold}, scores.options().dtype(at::kLong));
  if (b == 0) return out;
  const int64_t* len_ptr = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
  int64_t* out_ptr = out.data_ptr<int64_t>();
  std::atomic<bool> nonfinite{false};
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(n, 1));
  const uint64_t useed = static_cast<uint64_t>(seed), uoffset = static_cast<uint64_t>(offset);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, scores.scalar_type(), "radi_fast::partial_list", [&] {
        const scalar_t* s = scores.const_data_ptr<scalar_t>();
        at::parallel_for(0, b, grain, [&](int64_t begin, int64_t end) {
          if constexpr (std::is_same_v<scalar_t, double>) {
            partial_list_cpu_rows<scalar_t, Key64, double>(s, n, len_ptr, hot, cold, scheme, alpha,
                                                           useed, uoffset, out_ptr, begin, end,
                                                           nonfinite);
          } else {
            partial_list_cpu_rows<scalar_t, Key32, float>(s, n, len_ptr, hot, cold, scheme, alpha,
                                                          useed, uoffset, out_ptr, begin, end,
                                                          nonfinite);
          }
        });
      });
  TORCH_CHECK(!nonfinite.load(), "partial_list: scores contains non-finite values (NaN or inf) ",
              "among the valid answers");
  return out;
}

// --------------------------------------------------------------------------------------------
// Test helpers (underscore ops, CPU only): the exact building blocks, so that the tests can
// check them against an independent Python implementation.

std::vector<int64_t> philox_op(int64_t c0, int64_t c1, int64_t c2, int64_t c3, int64_t k0,
                               int64_t k1) {
  const uint32_t ctr[4] = {static_cast<uint32_t>(c0), static_cast<uint32_t>(c1),
                           static_cast<uint32_t>(c2), static_cast<uint32_t>(c3)};
  const uint32_t key[2] = {static_cast<uint32_t>(k0), static_cast<uint32_t>(k1)};
  uint32_t out[4];
  philox4x32_10(ctr, key, out);
  return {out[0], out[1], out[2], out[3]};
}

at::Tensor uniforms_op(int64_t m, int64_t seed, int64_t offset, int64_t row) {
  TORCH_CHECK(m >= 0 && row >= 0, "_uniforms: m and row must be >= 0");
  at::Tensor out = at::empty({m}, at::kDouble);
  double* o = out.data_ptr<double>();
  for (int64_t r = 1; r <= m; ++r)
    o[r - 1] = philox_uniform(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                              static_cast<uint32_t>(row), static_cast<uint32_t>(r));
  return out;
}

at::Tensor cold_keys_op(int64_t m, c10::string_view scheme_name, double alpha, int64_t seed,
                        int64_t offset, int64_t row) {
  const int scheme = parse_scheme(std::string_view(scheme_name.data(), scheme_name.size()));
  TORCH_CHECK(m >= 0 && row >= 0, "_cold_keys: m and row must be >= 0");
  at::Tensor out = at::empty({m}, at::kDouble);
  double* o = out.data_ptr<double>();
  for (int64_t r = 1; r <= m; ++r)
    o[r - 1] = cold_key(scheme, alpha, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                        static_cast<uint32_t>(row), r);
  return out;
}

at::Tensor portable_log_op(const at::Tensor& x) {
  at::Tensor xd = x.to(at::kDouble).contiguous().cpu();
  at::Tensor out = at::empty_like(xd);
  const double* in = xd.const_data_ptr<double>();
  double* o = out.data_ptr<double>();
  for (int64_t i = 0; i < xd.numel(); ++i) o[i] = portable_log(in[i]);
  return out;
}

}  // namespace
}  // namespace radi

TORCH_LIBRARY(radi_fast, m) {
  m.set_python_module("radi_fast.ops.sampler");
  m.def(
      "partial_list(Tensor scores, int hot, int cold, str scheme, float alpha, int seed, "
      "int offset=0, Tensor? lengths=None) -> Tensor");
  m.def("_philox4x32_10(int c0, int c1, int c2, int c3, int k0, int k1) -> int[]",
        &radi::philox_op);
  m.def("_uniforms(int m, int seed, int offset, int row) -> Tensor", &radi::uniforms_op);
  m.def("_cold_keys(int m, str scheme, float alpha, int seed, int offset, int row) -> Tensor",
        &radi::cold_keys_op);
  m.def("_portable_log(Tensor x) -> Tensor");
  m.impl("_portable_log", c10::DispatchKey::CompositeExplicitAutograd, &radi::portable_log_op);
}

TORCH_LIBRARY_IMPL(radi_fast, CPU, m) { m.impl("partial_list", &radi::partial_list_cpu); }

// A plain extension module (no pybind11) so that `import radi_fast._C` loads the library and
// runs the registrations above.
#ifndef RADI_WITH_CUDA
#define RADI_WITH_CUDA 0
#endif

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "radi_fast compiled ops: torch.ops.radi_fast.partial_list (see radi_fast.ops.sampler)",
      -1,
      nullptr,
  };
  PyObject* mod = PyModule_Create(&module_def);
  if (mod == nullptr) return nullptr;
  if (PyModule_AddIntConstant(mod, "cuda_kernels", RADI_WITH_CUDA) < 0 ||
      PyModule_AddIntConstant(mod, "openmp",
#ifdef _OPENMP
                              1
#else
                              0
#endif
                              ) < 0) {
    Py_DECREF(mod);
    return nullptr;
  }
  return mod;
}
}
