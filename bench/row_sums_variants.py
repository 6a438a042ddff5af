"""Candidate Sinkhorn row-sum kernels, timed against the package's by bench/row_sums_explore.py.

* ``rowsum_pipe``: the package's three 3xTF32 products per tile, software-pipelined (the next
  tile's products are issued before this tile's exponentials).
* ``rowsum_cat``: one tensor-core product per tile over ``WL`` lanes that already hold the three
  3xTF32 terms side by side (``[yb, yb, ys, cb, cs]`` per column, ``[ys, yb, yb, 1, 1]`` per row:
  4 k-steps at T = 10 instead of 6, one wgmma group), the row's own potential added per pair;
  ``PIPE`` pipelines it like ``rowsum_pipe``.
* ``rowsum_exp``: the package's loops with the exponential of :func:`exp2_variant` (inline PTX, a
  share on the FMA pipe, or none); ``rowsum_tma``: column tiles by TMA.

The timings in bench/results/row_sums_explore_*_nvidia_h100_80gb_hbm3.json were taken with this
file as of commit 72e4de1; since then the kernels that read Z share :func:`row_block` (which builds
the row operand before the activity test; in the bench every program is active).
"""
import triton
import triton.language as tl
from radi_fast.kernels.common import column_logits, load_points, row_operand
from radi_fast.kernels.sinkhorn import column_share


@triton.jit
def off_diagonal(c0, c1, d0, d1, BN: tl.constexpr):
    """The share's diagonal tiles ``[lo_d, hi_d)`` and its number of other tiles."""
    lo_d = tl.maximum(c0, d0)
    hi_d = tl.maximum(tl.minimum(c1, d1), lo_d)
    return lo_d, hi_d, (c1 - c0 - (hi_d - lo_d)) // BN


@triton.jit
def off_diagonal_tile(t, c0, lo_d, hi_d, BN: tl.constexpr):
    """The first column of the share's ``t``-th tile that does not meet the diagonal."""
    j0 = c0 + t * BN
    return tl.where(j0 >= lo_d, j0 + (hi_d - lo_d), j0)


@triton.jit
def row_block(zb_ptr, zs_ptr, nvalid_ptr, prev_delta_ptr, tol_ptr, KP, T: tl.constexpr, TP: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, G_SIDE: tl.constexpr, SPLIT: tl.constexpr):
    """The package kernel's preamble: whether this program works, its rows, their operand and
    its column share (the row operand is built even when it does not work: a bench only)."""
    b = tl.program_id(0).to(tl.int64)
    i0 = tl.program_id(1) * BM
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    active = (i0 < kb) & (kb >= 2) & (tl.load(prev_delta_ptr + b) > tl.load(tol_ptr))
    rows = i0 + tl.arange(0, BM)
    offs_t = tl.arange(0, TP)
    zb_b = zb_ptr + b * KP * TP
    zs_b = zs_ptr + b * KP * TP
    rb, rs = row_operand(load_points(zb_b, zs_b, rows, offs_t, TP, SPLIT), offs_t, T, G_SIDE, SPLIT)
    c0, c1, d0, d1 = column_share(kb, i0, BM, BN)
    return active, b, kb, rows, offs_t, zb_b, zs_b, rb, rs, c0, c1, d0, d1


@triton.jit
def rowsum_pipe(
    zb_ptr, zs_ptr, nvalid_ptr, prev_delta_ptr, part_ptr, tol_ptr, K, KP, NSPLIT,
    T: tl.constexpr, TP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    G_SIDE: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr, ACC: tl.constexpr,
):
    active, b, kb, rows, offs_t, zb_b, zs_b, rb, rs, c0, c1, d0, d1 = row_block(
        zb_ptr, zs_ptr, nvalid_ptr, prev_delta_ptr, tol_ptr, KP, T, TP, BM, BN, G_SIDE, SPLIT)
    if active:
        lo_d, hi_d, n_off = off_diagonal(c0, c1, d0, d1, BN)
        acc = tl.zeros([BM], COMPUTE)
        # off-diagonal tiles, software-pipelined: the next tile's products are issued before
        # this tile's exponentials
        j0 = off_diagonal_tile(0, c0, lo_d, hi_d, BN)
        x, cols = column_logits(zb_b, zs_b, rb, rs, j0, offs_t, BN, TP, SPLIT)
        for t in range(1, n_off):
            j0 = off_diagonal_tile(t, c0, lo_d, hi_d, BN)
            xn, cols = column_logits(zb_b, zs_b, rb, rs, j0, offs_t, BN, TP, SPLIT)
            acc += tl.sum(tl.exp2(x), axis=1)
            x = xn
        if n_off > 0:
            acc += tl.sum(tl.exp2(x), axis=1)
        for j0 in range(lo_d, hi_d, BN):
            x, cols = column_logits(zb_b, zs_b, rb, rs, j0, offs_t, BN, TP, SPLIT)
            x = tl.where(rows[:, None] == cols[None, :], float("-inf"), x)
            acc += tl.sum(tl.exp2(x), axis=1)
        tl.store(part_ptr + (tl.program_id(2) * tl.num_programs(0) + b) * K + rows, acc, mask=rows < kb)


@triton.jit
def _tile_logits(w_b, a, j0, offs_w, BN: tl.constexpr, WL: tl.constexpr):
    cols = j0 + tl.arange(0, BN)
    wj = tl.trans(tl.load(w_b + cols[:, None] * WL + offs_w[None, :]))
    return tl.dot(a, wj, input_precision="tf32"), cols


@triton.jit
def rowsum_cat(
    w_ptr,  # [B, KP, WL] column lanes
    a_src_ptr,  # [WL] int32: the W lane each row-operand lane copies (-1: a one, -2: zero)
    own_ptr,  # [B, K] the row's own potential lane (added per pair; zero when CAT64)
    nvalid_ptr, prev_delta_ptr, part_ptr, tol_ptr, K, KP, NSPLIT,
    WL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, COMPUTE: tl.constexpr, PIPE: tl.constexpr,
    ADD_OWN: tl.constexpr, EXP: tl.constexpr = 0,
):
    b = tl.program_id(0).to(tl.int64)
    i0 = tl.program_id(1) * BM
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    if (i0 < kb) & (kb >= 2) & (tl.load(prev_delta_ptr + b) > tl.load(tol_ptr)):
        rows = i0 + tl.arange(0, BM)
        offs_w = tl.arange(0, WL)
        w_b = w_ptr + b * KP * WL
        src = tl.load(a_src_ptr + offs_w)
        a = tl.load(w_b + rows[:, None] * WL + tl.maximum(src, 0)[None, :])
        a = tl.where(src[None, :] == -1, 1.0, tl.where(src[None, :] == -2, 0.0, a))
        own = tl.load(own_ptr + b * K + rows, mask=rows < kb, other=0.0)
        c0, c1, d0, d1 = column_share(kb, i0, BM, BN)
        lo_d, hi_d, n_off = off_diagonal(c0, c1, d0, d1, BN)
        acc = tl.zeros([BM], COMPUTE)
        if PIPE:
            j0 = off_diagonal_tile(0, c0, lo_d, hi_d, BN)
            x, cols = _tile_logits(w_b, a, j0, offs_w, BN, WL)
            for t in range(1, n_off):
                j0 = off_diagonal_tile(t, c0, lo_d, hi_d, BN)
                xn, cols = _tile_logits(w_b, a, j0, offs_w, BN, WL)
                if ADD_OWN:
                    acc += tl.sum(exp2_variant(x + own[:, None], EXP), axis=1)
                else:
                    acc += tl.sum(exp2_variant(x, EXP), axis=1)
                x = xn
            if n_off > 0:
                if ADD_OWN:
                    acc += tl.sum(exp2_variant(x + own[:, None], EXP), axis=1)
                else:
                    acc += tl.sum(tl.exp2(x), axis=1)
        else:
            for t in range(0, n_off):
                j0 = off_diagonal_tile(t, c0, lo_d, hi_d, BN)
                x, cols = _tile_logits(w_b, a, j0, offs_w, BN, WL)
                if ADD_OWN:
                    acc += tl.sum(exp2_variant(x + own[:, None], EXP), axis=1)
                else:
                    acc += tl.sum(tl.exp2(x), axis=1)
        for j0 in range(lo_d, hi_d, BN):
            x, cols = _tile_logits(w_b, a, j0, offs_w, BN, WL)
            x = tl.where(rows[:, None] == cols[None, :], float("-inf"), x + own[:, None])
            acc += tl.sum(tl.exp2(x), axis=1)
        tl.store(part_ptr + (tl.program_id(2) * tl.num_programs(0) + b) * K + rows, acc, mask=rows < kb)


# 2^x on the FMA pipe (the FlashAttention-4 habit): x clamped at -126.5, j = round(x) by the
# 1.5 * 2^23 trick, f = x - j in [-0.5, 0.5], 2^f by a degree-5 fit (fp32 relative error 2.2e-7),
# 2^j added to the exponent bits. 11 instructions, no MUFU.
_POLY = """
    max.ftz.f32 xc, {x}, 0fC2FD0000;
    add.rn.ftz.f32 t, xc, 0f4B400000;
    sub.rn.ftz.f32 r, t, 0f4B400000;
    sub.rn.ftz.f32 f, xc, r;
    fma.rn.ftz.f32 p, f, 0f3AAE041F, 0f3C1E860D;
    fma.rn.ftz.f32 p, p, f, 0f3D635B73;
    fma.rn.ftz.f32 p, p, f, 0f3E75FC8C;
    fma.rn.ftz.f32 p, p, f, 0f3F317214;
    fma.rn.ftz.f32 p, p, f, 0f3F800001;
    mov.b32 tb, t;
    shl.b32 tb, tb, 23;
    mov.b32 pb, p;
    add.s32 {y}, pb, tb;
"""


def _exp2_asm(n_poly):
    lines = ["{", ".reg .f32 xc, t, r, f, p;", ".reg .b32 tb, pb;"]
    for k in range(4):
        if k >= 4 - n_poly:
            lines.append(_POLY.format(x=f"${k + 4}", y=f"${k}"))
        else:
            lines.append(f"ex2.approx.ftz.f32 ${k}, ${k + 4};")
    lines.append("}")
    return "\n".join(lines)


EXP2_ASM_0 = tl.constexpr(_exp2_asm(0))
EXP2_ASM_1 = tl.constexpr(_exp2_asm(1))
EXP2_ASM_2 = tl.constexpr(_exp2_asm(2))


@triton.jit
def exp2_variant(x, EXP: tl.constexpr):
    """EXP 0: tl.exp2; 1: the same MUFU through inline asm; 2/3: one/two of every four on the FMA
    pipe; 4: no exponential (the rest of the loop alone)."""
    if EXP == 0:
        y = tl.exp2(x)
    elif EXP == 1:
        y = tl.inline_asm_elementwise(EXP2_ASM_0, "=r,=r,=r,=r,r,r,r,r", [x], dtype=tl.float32, is_pure=True, pack=4)
    elif EXP == 2:
        y = tl.inline_asm_elementwise(EXP2_ASM_1, "=r,=r,=r,=r,r,r,r,r", [x], dtype=tl.float32, is_pure=True, pack=4)
    elif EXP == 3:
        y = tl.inline_asm_elementwise(EXP2_ASM_2, "=r,=r,=r,=r,r,r,r,r", [x], dtype=tl.float32, is_pure=True, pack=4)
    else:
        y = x
    return y


@triton.jit
def rowsum_exp(
    zb_ptr, zs_ptr, nvalid_ptr, prev_delta_ptr, part_ptr, tol_ptr, K, KP, NSPLIT,
    T: tl.constexpr, TP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    G_SIDE: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr, EXP: tl.constexpr,
):
    """The package's row sums with the exponential of :func:`exp2_variant`."""
    active, b, kb, rows, offs_t, zb_b, zs_b, rb, rs, c0, c1, d0, d1 = row_block(
        zb_ptr, zs_ptr, nvalid_ptr, prev_delta_ptr, tol_ptr, KP, T, TP, BM, BN, G_SIDE, SPLIT)
    if active:
        acc = tl.zeros([BM], COMPUTE)
        for j0 in range(c0, tl.minimum(c1, d0), BN):
            x, cols = column_logits(zb_b, zs_b, rb, rs, j0, offs_t, BN, TP, SPLIT)
            acc += tl.sum(exp2_variant(x, EXP), axis=1)
        for j0 in range(tl.maximum(c0, d0), tl.minimum(c1, d1), BN):
            x, cols = column_logits(zb_b, zs_b, rb, rs, j0, offs_t, BN, TP, SPLIT)
            x = tl.where(rows[:, None] == cols[None, :], float("-inf"), x)
            acc += tl.sum(tl.exp2(x), axis=1)
        for j0 in range(tl.maximum(c0, d1), c1, BN):
            x, cols = column_logits(zb_b, zs_b, rb, rs, j0, offs_t, BN, TP, SPLIT)
            acc += tl.sum(exp2_variant(x, EXP), axis=1)
        tl.store(part_ptr + (tl.program_id(2) * tl.num_programs(0) + b) * K + rows, acc, mask=rows < kb)


@triton.jit
def rowsum_tma(
    zb_ptr, zs_ptr, nvalid_ptr, prev_delta_ptr, part_ptr, tol_ptr, K, KP, NSPLIT, ROWS,
    T: tl.constexpr, TP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    G_SIDE: tl.constexpr, COMPUTE: tl.constexpr, EXP: tl.constexpr,
):
    """:func:`rowsum_exp` (fp32, split points) with the column tiles brought in by the tensor
    memory accelerator (device-side descriptors over Z viewed as [B * KP, TP]): mbarrier waits
    instead of cp.async groups and a block-wide barrier per tile."""
    b = tl.program_id(0).to(tl.int64)
    i0 = tl.program_id(1) * BM
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    if (i0 < kb) & (kb >= 2) & (tl.load(prev_delta_ptr + b) > tl.load(tol_ptr)):
        rows = i0 + tl.arange(0, BM)
        offs_t = tl.arange(0, TP)
        zb_b = zb_ptr + b * KP * TP
        zs_b = zs_ptr + b * KP * TP
        rb, rs = row_operand(load_points(zb_b, zs_b, rows, offs_t, TP, True), offs_t, T, G_SIDE, True)
        db = tl.make_tensor_descriptor(zb_ptr, shape=[ROWS, TP], strides=[TP, 1], block_shape=[BN, TP])
        ds = tl.make_tensor_descriptor(zs_ptr, shape=[ROWS, TP], strides=[TP, 1], block_shape=[BN, TP])
        c0, c1, d0, d1 = column_share(kb, i0, BM, BN)
        lo_d, hi_d, n_off = off_diagonal(c0, c1, d0, d1, BN)
        base = (b * KP).to(tl.int32)
        acc = tl.zeros([BM], COMPUTE)
        for t in range(0, n_off):
            j0 = off_diagonal_tile(t, c0, lo_d, hi_d, BN)
            zjb = tl.trans(db.load([base + j0, 0]))
            zjs = tl.trans(ds.load([base + j0, 0]))
            x = tl.dot(rs, zjb, input_precision="tf32")
            x = tl.dot(rb, zjs, x, input_precision="tf32")
            x = tl.dot(rb, zjb, x, input_precision="tf32")
            acc += tl.sum(exp2_variant(x, EXP), axis=1)
        for j0 in range(lo_d, hi_d, BN):
            x, cols = column_logits(zb_b, zs_b, rb, rs, j0, offs_t, BN, TP, True)
            x = tl.where(rows[:, None] == cols[None, :], float("-inf"), x)
            acc += tl.sum(tl.exp2(x), axis=1)
        tl.store(part_ptr + (tl.program_id(2) * tl.num_programs(0) + b) * K + rows, acc, mask=rows < kb)
