"""Small Triton helpers shared by the RADI-P kernels.

* exponentials are ``tl.exp2`` on base-2 logits: for fp32 Triton lowers it to
  ``ex2.approx.ftz.f32``, a single MUFU.EX2 in SASS (no denormal fix-up, no multiply by log2 e).
* :func:`split_tf32`, :func:`augmented_dot` — the 3xTF32 product of the augmented point lanes
  that gives a tile's logits (fp32), or one exact dot (fp64).
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
# keeps sign, exponent and the 10 mantissa bits that a TF32 MMA reads (after +0x1000: round to nearest)
TF32_MASK = tl.constexpr(0xFFFFE000)


@triton.jit
def split_tf32(x):
    """fp32 ``x = big + small`` with ``big`` exactly representable in TF32 (round to nearest)."""
    big = (((x.to(tl.uint32, bitcast=True) + 0x1000) & TF32_MASK)).to(tl.float32, bitcast=True)
    return big, x - big


@triton.jit
def augmented_dot(yi, yi_b, yi_s, yj, COMPUTE: tl.constexpr):
    """``yi @ yj`` for the augmented lanes: fp64 one IEEE dot; fp32 3xTF32 (small*big + big*small
    + big*big; finite operands, so no NaN fix-up), ``yi_b, yi_s = split_tf32(yi)`` hoisted by the caller."""
    if COMPUTE == tl.float64:
        x = tl.dot(yi, yj, input_precision="ieee")
    else:
        yj_b, yj_s = split_tf32(yj)
        x = tl.dot(yi_s, yj_b, input_precision="tf32")
        x = tl.dot(yi_b, yj_s, x, input_precision="tf32")
        x = tl.dot(yi_b, yj_b, x, input_precision="tf32")
    return x


@triton.jit
def lowbias32(x):
    """``x`` uint32 -> uint32 (multiplications wrap mod 2**32, shifts are logical)."""
    x = x ^ (x >> 16)
    x = x * tl.full((), 0x7FEB352D, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full((), 0x846CA68B, tl.uint32)
    x = x ^ (x >> 16)
    return x
