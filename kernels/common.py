"""Small Triton helpers shared by the RADI-P kernels (derivations: docs/triton.md).

* Exponentials are ``tl.exp2`` on base-2 logits: for fp32 Triton lowers it to
  ``ex2.approx.ftz.f32``, one MUFU.EX2 in SASS.
* The augmented points ``Z [B, KP, TP]`` (answer-major, ``TP`` lanes contiguous) hold per answer
  ``[y (T lanes), p, q, 1, 0...]`` with ``p = F - hs``, ``q = G - hs`` (base-2 potentials minus
  the half squared norm). In fp32 they are stored split, ``Z = Zb + Zs`` with ``Zb`` exact in
  TF32, so a column tile goes from global memory to shared memory and into the tensor cores
  with no register pass. :func:`row_operand` turns a row tile into ``[y, 0, 1, p]`` ("F" side:
  ``x_ij = <y_i, y_j> + p_i + q_j``) or ``[y, 1, 0, q]`` ("G" side: ``<y_i, y_j> + q_i + p_j``).
* :func:`lowbias32` is Wellons' lowbias32 hash on uint32, bit-for-bit ``radi_fast._random``.
"""
import triton
import triton.language as tl

LOG2E_F = 1.4426950408889634
LN2_F = 0.6931471805599453
# constexpr copies for use inside @triton.jit functions (plain globals are not allowed there)
LOG2E = tl.constexpr(LOG2E_F)
LN2 = tl.constexpr(LN2_F)
# a finite "minus infinity" for padded answers: exp2 of it is 0, and its TF32 split is finite
PAD_LOGIT = tl.constexpr(-1e30)
# keeps sign, exponent and the 10 mantissa bits that a TF32 MMA reads (after +0x1000: round to nearest)
TF32_MASK = tl.constexpr(0xFFFFE000)


@triton.jit
def split_tf32(x):
    """fp32 ``x = big + small`` with ``big`` exactly representable in TF32 (round to nearest)."""
    big = (((x.to(tl.uint32, bitcast=True) + 0x1000) & TF32_MASK)).to(tl.float32, bitcast=True)
    return big, x - big


@triton.jit
def store_lane(zb_ptr, zs_ptr, hs_ptr, b, rows, pot, mask, K, KP, T: tl.constexpr, TP: tl.constexpr,
               SIDE: tl.constexpr, SPLIT: tl.constexpr):
    """Z's p (SIDE 0) or q (SIDE 1) lane of ``rows`` from their new potential: ``pot - hs``."""
    own = pot - tl.load(hs_ptr + b * K + rows, mask=mask, other=0.0)
    lane = b * KP * TP + rows * TP + T + SIDE
    if SPLIT:
        big, small = split_tf32(own)
        tl.store(zb_ptr + lane, big, mask=mask)
        tl.store(zs_ptr + lane, small, mask=mask)
    else:
        tl.store(zb_ptr + lane, own, mask=mask)


@triton.jit
def load_points(zb_ptr, zs_ptr, idx, offs_t, TP: tl.constexpr, SPLIT: tl.constexpr):
    """``Z[idx]`` as a [len(idx), TP] tile (``Zb + Zs`` when SPLIT: exact)."""
    ptrs = idx[:, None] * TP + offs_t[None, :]
    z = tl.load(zb_ptr + ptrs)
    if SPLIT:
        z += tl.load(zs_ptr + ptrs)
    return z


@triton.jit
def _operand(z, offs_t, shift, OWN: tl.constexpr, ONE: tl.constexpr, SHIFTED: tl.constexpr, T: tl.constexpr,
             SPLIT: tl.constexpr):
    """``[y, lanes T and T + 1 with a 1 at ONE, z[OWN] (+ shift)]`` from a tile of Z, split for the
    3xTF32 product (fp64: ``(r, r)``, the second unused)."""
    lane = offs_t[None, :]
    own = tl.sum(tl.where(lane == OWN, z, 0.0), axis=1)
    if SHIFTED:
        own += shift
    r = tl.where(lane < T, z, tl.where(lane == ONE, 1.0, tl.where(lane == T + 2, own[:, None], 0.0)))
    if SPLIT:
        rb, rs = split_tf32(r)
    else:
        rb = r
        rs = r
    return rb, rs


@triton.jit
def row_operand(z, offs_t, T: tl.constexpr, G_SIDE: tl.constexpr, SPLIT: tl.constexpr):
    """Rows ``[y, 0, 1, p]`` (F side) or ``[y, 1, 0, q]`` (G side) from a [BM, TP] tile of Z,
    split for the 3xTF32 product (fp64: ``(r, r)``, the second unused)."""
    return _operand(z, offs_t, 0.0, T + G_SIDE, T + 1 - G_SIDE, False, T, SPLIT)


@triton.jit
def symmetric_operand(z, offs_t, shift, T: tl.constexpr, G_SIDE: tl.constexpr, SPLIT: tl.constexpr):
    """The symmetric half-step's stationary points from a [BS, TP] tile of Z: ``[y, 0, 1, q + shift]``
    (F side: times ``Z_i`` gives ``<y_i, y_j> + q_i + q_j + shift``) or ``[y, 1, 0, p + shift]`` (G
    side), split like :func:`row_operand`."""
    return _operand(z, offs_t, shift, T + 1 - G_SIDE, T + 1 - G_SIDE, True, T, SPLIT)


@triton.jit
def split_product(ab, a_small, bb, b_small, SPLIT: tl.constexpr):
    """``a @ b`` from split operands: fp32 3xTF32 ``a_small bb + ab b_small + ab bb`` (the
    small*small term, ~2^-22 relative, dropped); fp64 one IEEE product (the small parts unused)."""
    if SPLIT:
        x = tl.dot(a_small, bb, input_precision="tf32")
        x = tl.dot(ab, b_small, x, input_precision="tf32")
        x = tl.dot(ab, bb, x, input_precision="tf32")
    else:
        x = tl.dot(ab, bb, input_precision="ieee")
    return x


@triton.jit
def moving_logits(zb_ptr, zs_ptr, rbt, rst, i0, offs_t, BS: tl.constexpr, TP: tl.constexpr, SPLIT: tl.constexpr):
    """Logits of one [BS, BS] tile of the symmetric half-step: the points ``Z_i`` of rows
    ``i0 .. i0 + BS`` (straight from memory: the tensor cores' A operand) times the transposed
    stationary operand ``(rbt, rst)`` from :func:`symmetric_operand`; 3xTF32 as :func:`column_logits`."""
    rows = i0 + tl.arange(0, BS)
    ptrs = rows[:, None] * TP + offs_t[None, :]
    zib = tl.load(zb_ptr + ptrs)
    if SPLIT:
        zis = tl.load(zs_ptr + ptrs)
    else:
        zis = zib
    return split_product(zib, zis, rbt, rst, SPLIT), rows


@triton.jit
def column_logits(zb_ptr, zs_ptr, rb, rs, j0, offs_t, BN: tl.constexpr, TP: tl.constexpr, SPLIT: tl.constexpr):
    """Logits of one [BM, BN] tile, columns ``j0 .. j0 + BN``: rows ``(rb, rs)`` from
    :func:`row_operand` times the column points. fp32: 3xTF32 (small*big + big*small + big*big; the
    small*small term, ~2^-22 relative, is dropped); fp64: one IEEE product. The column loads are
    unmasked (Z is padded to a whole number of tiles), so they stream straight to shared memory."""
    cols = j0 + tl.arange(0, BN)
    ptrs = cols[:, None] * TP + offs_t[None, :]
    zjb = tl.trans(tl.load(zb_ptr + ptrs))
    if SPLIT:
        zjs = tl.trans(tl.load(zs_ptr + ptrs))
    else:
        zjs = zjb
    return split_product(rb, rs, zjb, zjs, SPLIT), cols


@triton.jit
def lowbias32(x):
    """``x`` uint32 -> uint32 (multiplications wrap mod 2**32, shifts are logical)."""
    x = x ^ (x >> 16)
    x = x * tl.full((), 0x7FEB352D, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full((), 0x846CA68B, tl.uint32)
    x = x ^ (x >> 16)
    return x
