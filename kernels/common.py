"""Small Triton helpers shared by the RADI-P kernels.

* exponentials are ``tl.exp2`` on base-2 logits: for fp32 Triton lowers it to
  ``ex2.approx.ftz.f32``, a single MUFU.EX2 in SASS (no denormal fix-up, no multiply by log2 e).
* :func:`lowbias32` — Wellons' lowbias32 hash on uint32, bit-for-bit the integer hash of
  ``radi_fast._random`` (the "random" margin mode).
"""
import triton
import triton.language as tl

LOG2E_F = 1.4426950408889634
LN2_F = 0.6931471805599453
# constexpr copies for use inside @triton.jit functions (plain globals are not allowed there)
LOG2E = tl.constexpr(LOG2E_F)
LN2 = tl.constexpr(LN2_F)


@triton.jit
def lowbias32(x):
    """``x`` uint32 -> uint32 (multiplications wrap mod 2**32, shifts are logical)."""
    x = x ^ (x >> 16)
    x = x * tl.full((), 0x7FEB352D, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full((), 0x846CA68B, tl.uint32)
    x = x ^ (x >> 16)
    return x
