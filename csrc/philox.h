// Counter-based random numbers and the cold-list sampling keys of radi_fast::partial_list.
//
// This header is shared, unchanged, by the C++ CPU kernel and the CUDA kernel, so that both
// compute *bit-identical* keys for the same (seed, offset, row, rank):
//   * Philox4x32-10 (Salmon et al., SC'11; checked against Random123's known-answer vectors),
//   * a portable natural logarithm built from + - * / only (no libm, so the CPU and the GPU
//     cannot round differently),
//   * no fused multiply-add: device code uses the explicitly rounded __d*_rn intrinsics, host
//     code is compiled with -ffp-contract=off (see setup.py / .ci/compile_cuda.sh).
// It depends on nothing but <stdint.h>/<string.h> and compiles with plain g++ or plain nvcc.
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RADI_HD __host__ __device__ __forceinline__
#else
#define RADI_HD inline
#endif

namespace radi {

// ---------------------------------------------------------------------------------------------
// Explicitly rounded double arithmetic (never contracted into an FMA).
RADI_HD double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
RADI_HD double dsub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
RADI_HD double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
RADI_HD double ddiv(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

RADI_HD uint64_t double_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t b;
  memcpy(&b, &x, sizeof b);
  return b;
#endif
}
RADI_HD double bits_double(uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(b));
#else
  double x;
  memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// ---------------------------------------------------------------------------------------------
// Philox4x32-10.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

RADI_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// out = Philox4x32-10(counter ctr, key key); ctr/out may alias.
RADI_HD void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  uint32_t k0 = key[0], k1 = key[1];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t lo0 = kPhiloxM0 * c0, hi0 = mulhi32(kPhiloxM0, c0);
    const uint32_t lo1 = kPhiloxM1 * c2, hi1 = mulhi32(kPhiloxM1, c2);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// The uniform of (seed, offset, row, pos) takes 64 of the 128 bits of one Philox call:
//   key     = (seed low 32 bits, seed high 32 bits),
//   counter = (pos >> 1, row, offset low 32 bits, offset high 32 bits),
//   (lo, hi) = (out[0], out[1]) for even pos, (out[2], out[3]) for odd pos,
//   bits52  = (hi << 20) | (lo >> 12),
// so positions 2k and 2k + 1 share one call (half the cost of one call per position).
RADI_HD void philox_block(uint64_t seed, uint64_t offset, uint32_t row, uint32_t block,
                          uint32_t out[4]) {
  const uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  const uint32_t ctr[4] = {block, row, static_cast<uint32_t>(offset),
                           static_cast<uint32_t>(offset >> 32)};
  philox4x32_10(ctr, key, out);
}

RADI_HD uint64_t bits52_from_block(const uint32_t out[4], uint32_t pos) {
  const uint32_t lo = (pos & 1u) ? out[2] : out[0];
  const uint32_t hi = (pos & 1u) ? out[3] : out[1];
  return (static_cast<uint64_t>(hi) << 20) | (lo >> 12);
}

RADI_HD uint64_t philox_bits52(uint64_t seed, uint64_t offset, uint32_t row, uint32_t pos) {
  uint32_t out[4];
  philox_block(seed, offset, row, pos >> 1, out);
  return bits52_from_block(out, pos);
}

#if !defined(__CUDA_ARCH__)
// Host only: kLanes consecutive blocks (first_block + l) at once, the same values as
// philox_block, computed lane-interleaved so that the CPU overlaps the independent multiply
// chains (one Philox call alone is latency-bound).
constexpr int kPhiloxLanes = 4;
inline void philox_blocks(uint64_t seed, uint64_t offset, uint32_t row, uint32_t first_block,
                          uint32_t out[kPhiloxLanes][4]) {
  uint32_t c0[kPhiloxLanes], c1[kPhiloxLanes], c2[kPhiloxLanes], c3[kPhiloxLanes];
  for (int l = 0; l < kPhiloxLanes; ++l) {
    c0[l] = first_block + static_cast<uint32_t>(l);
    c1[l] = row;
    c2[l] = static_cast<uint32_t>(offset);
    c3[l] = static_cast<uint32_t>(offset >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    for (int l = 0; l < kPhiloxLanes; ++l) {
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0[l];
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2[l];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
      c0[l] = n0;
      c1[l] = static_cast<uint32_t>(p1);
      c2[l] = n2;
      c3[l] = static_cast<uint32_t>(p0);
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  for (int l = 0; l < kPhiloxLanes; ++l) {
    out[l][0] = c0[l];
    out[l][1] = c1[l];
    out[l][2] = c2[l];
    out[l][3] = c3[l];
  }
}
#endif

constexpr double kTwoPowMinus52 = 0x1p-52;
constexpr uint64_t kBits52Max = (static_cast<uint64_t>(1) << 52) - 1;

// u = (bits + 1/2) 2^-52, exactly, in [2^-53, 1 - 2^-53]: never 0, never 1.
// (bits < 2^52 converts exactly, through the cheaper signed conversion.)
RADI_HD double bits52_to_uniform(uint64_t bits) {
  return dmul(dadd(static_cast<double>(static_cast<int64_t>(bits)), 0.5), kTwoPowMinus52);
}

RADI_HD double philox_uniform(uint64_t seed, uint64_t offset, uint32_t row, uint32_t pos) {
  return bits52_to_uniform(philox_bits52(seed, offset, row, pos));
}

// ---------------------------------------------------------------------------------------------
// Portable natural logarithm for positive finite normal x (all the inputs used here are:
// u >= 2^-53, -log(u) >= 1.1e-16, ranks >= 1). x = 2^k m with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716, summed as a Taylor series to s^23
// (truncation < 1e-19 relative); log x = k ln2_hi + (log m + k ln2_lo). Accurate to a few ulp.
// Outside its domain: -inf for 0 and negative numbers, +inf for +inf, NaN for NaN.
constexpr double kLn2Hi = 0x1.62e42feep-1;  // ln 2, low 21 bits zero: k * kLn2Hi is exact
constexpr double kLn2Lo = 0x1.a39ef35793c76p-33;  // ln 2 - kLn2Hi

RADI_HD double portable_log(double x) {
  if (!(x > 0.0)) return x == x ? bits_double(0xFFF0000000000000ull) : x;  // -inf, or NaN
  uint64_t b = double_bits(x);
  int k = 0;
  if ((b >> 52) == 0) {  // subnormal: scale by 2^54
    x = dmul(x, 0x1p54);
    b = double_bits(x);
    k = -54;
  }
  if ((b >> 52) >= 0x7FF) return x;  // +inf
  k += static_cast<int>(b >> 52) - 1023;
  // m in [1, 2) from the mantissa; fold to [sqrt(1/2), sqrt(2)).
  uint64_t mbits = (b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull;
  double m = bits_double(mbits);
  if (m > 0x1.6a09e667f3bcdp+0) {  // sqrt(2) rounded; exact halving
    m = dmul(m, 0.5);
    k += 1;
  }
  const double f = dsub(m, 1.0);  // exact (Sterbenz)
  const double s = ddiv(f, dadd(2.0, f));
  const double z = dmul(s, s);
  // P(z) = 1/3 + z/5 + z^2/7 + ... + z^10/23, Horner.
  double p = 0x1.642c8590b2164p-5 /* 1/23 */;
  p = dadd(dmul(p, z), 0x1.8618618618618p-5 /* 1/21 */);
  p = dadd(dmul(p, z), 0x1.af286bca1af28p-5 /* 1/19 */);
  p = dadd(dmul(p, z), 0x1.e1e1e1e1e1e1ep-5 /* 1/17 */);
  p = dadd(dmul(p, z), 0x1.1111111111111p-4 /* 1/15 */);
  p = dadd(dmul(p, z), 0x1.3b13b13b13b14p-4 /* 1/13 */);
  p = dadd(dmul(p, z), 0x1.745d1745d1746p-4 /* 1/11 */);
  p = dadd(dmul(p, z), 0x1.c71c71c71c71cp-4 /* 1/9 */);
  p = dadd(dmul(p, z), 0x1.2492492492492p-3 /* 1/7 */);
  p = dadd(dmul(p, z), 0x1.999999999999ap-3 /* 1/5 */);
  p = dadd(dmul(p, z), 0x1.5555555555555p-2 /* 1/3 */);
  const double two_s = dadd(s, s);
  // log m = 2s + 2s * z * P(z)
  const double log_m = dadd(two_s, dmul(dmul(two_s, z), p));
  const double dk = static_cast<double>(k);
  return dadd(dmul(dk, kLn2Hi), dadd(log_m, dmul(dk, kLn2Lo)));
}

// ---------------------------------------------------------------------------------------------
// The cold-list law. Rank r = 1 .. M within the remaining list (M = length - hot).
enum Scheme : int { kSchemeExp = 0, kSchemeZipf = 1, kSchemeRandom = 2 };

// The most negative finite double: where a very peaked law's -alpha r overflows, the log weight
// saturates here, so every key stays finite (ties, which go to the lower rank, are then the
// law's limit: the deterministic top ranks; a -inf key would also tie with the CUDA selection's
// marks of taken ranks).
constexpr double kLogWeightFloor = -0x1.fffffffffffffp+1023;

// Unnormalised log-probability of rank r (non-increasing in r for alpha >= 0):
// exp: -alpha r; zipf: -alpha log r; random: 0; never below kLogWeightFloor.
RADI_HD double rank_log_weight(int scheme, double alpha, int64_t r) {
  double w = 0.0;
  if (scheme == kSchemeExp) w = -dmul(alpha, static_cast<double>(r));
  if (scheme == kSchemeZipf) w = -dmul(alpha, portable_log(static_cast<double>(r)));
  return w < kLogWeightFloor ? kLogWeightFloor : w;
}

// Gumbel-top-k key of rank r given its uniform u: log p_r + G, G = -log(-log u).
RADI_HD double gumbel_key(double log_weight, double u) {
  const double e = -portable_log(u);  // Exp(1) variate, > 0
  return dsub(log_weight, portable_log(e));
}

RADI_HD double cold_key(int scheme, double alpha, uint64_t seed, uint64_t offset, uint32_t row,
                        int64_t r) {
  const double u = philox_uniform(seed, offset, row, static_cast<uint32_t>(r));
  return gumbel_key(rank_log_weight(scheme, alpha, r), u);
}

// Upper bound on any Gumbel value G = -log(-log u) this generator can produce
// (u <= 1 - 2^-53 gives G <= 36.74); used for exact early termination on the CPU.
constexpr double kGumbelMax = 40.0;

// Key order of the cold draws: larger key first, ties to the lower rank.
RADI_HD bool key_before(double ka, int64_t ra, double kb, int64_t rb) {
  return ka > kb || (ka == kb && ra < rb);
}

}  // namespace radi
