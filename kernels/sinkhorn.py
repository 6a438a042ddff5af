"""Algorithm 1's half-steps on the augmented points Z (docs/triton.md, "Sinkhorn").

F side, per row i (base 2; G side with p and q swapped):
``F_i <- F_i - log2 sum_{j != i, j < K_b} 2^(<y_i, y_j> + p_i + q_j)``, ``p = F - hs``, ``q = G - hs``.
``sinkhorn_row_sums_kernel`` sums the ``2^x`` of its share of column tiles (the previous ``p_i`` is
the shift: no running max); ``sinkhorn_update_kernel`` adds the shares, redoes rows whose sum
left ``[SHIFT_LO, SHIFT_HI]`` with an online max, writes the potential, its lane of Z and, on the
G side, the per-sample stopping statistic. A sample with ``prev_delta <= tol`` or ``K_b < 2``
does nothing.
"""
import triton
import triton.language as tl

from .common import LN2, column_logits, load_points, row_operand, store_lane


@triton.jit
def sinkhorn_row_sums_kernel(
    zb_ptr, zs_ptr,  # [B, KP, TP] augmented points (zs only when SPLIT)
    nvalid_ptr,  # [B] int64 K_b
    prev_delta_ptr,  # [B] stopping statistic of the previous iteration (+inf before the first)
    part_ptr,  # out [NSPLIT, B, K] partial row sums
    tol_ptr,  # [1] the stopping tolerance in the compute dtype (a float argument would be fp32)
    K, KP, NSPLIT,
    T: tl.constexpr, TP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    G_SIDE: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr, ACC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    i0 = tl.program_id(1) * BM
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    if (i0 < kb) & (kb >= 2) & (tl.load(prev_delta_ptr + b) > tl.load(tol_ptr)):
        rows = i0 + tl.arange(0, BM)
        offs_t = tl.arange(0, TP)
        zb_b = zb_ptr + b * KP * TP
        zs_b = zs_ptr + b * KP * TP
        rb, rs = row_operand(load_points(zb_b, zs_b, rows, offs_t, TP, SPLIT), offs_t, T, G_SIDE, SPLIT)
        # this program's share of the column tiles: [c0, c1), whole tiles
        n_tiles = tl.cdiv(kb, BN)
        per = tl.cdiv(n_tiles, NSPLIT) * BN
        c0 = tl.program_id(2) * per
        c1 = tl.minimum(n_tiles * BN, c0 + per)
        d0 = (i0 // BN) * BN  # the tiles that meet the diagonal: [d0, d1)
        d1 = tl.cdiv(i0 + BM, BN) * BN
        if ACC:  # per-pair accumulators, one reduction at the end
            acc = tl.zeros([BM, BN], COMPUTE)
        else:  # row sums per tile (in the MMA layout: in-thread adds and two shuffles)
            acc = tl.zeros([BM], COMPUTE)
        for j0 in range(c0, tl.minimum(c1, d0), BN):
            x, cols = column_logits(zb_b, zs_b, rb, rs, j0, offs_t, BN, TP, SPLIT)
            if ACC:
                acc += tl.exp2(x)
            else:
                acc += tl.sum(tl.exp2(x), axis=1)
        for j0 in range(tl.maximum(c0, d0), tl.minimum(c1, d1), BN):
            x, cols = column_logits(zb_b, zs_b, rb, rs, j0, offs_t, BN, TP, SPLIT)
            x = tl.where(rows[:, None] == cols[None, :], float("-inf"), x)
            if ACC:
                acc += tl.exp2(x)
            else:
                acc += tl.sum(tl.exp2(x), axis=1)
        for j0 in range(tl.maximum(c0, d1), c1, BN):
            x, cols = column_logits(zb_b, zs_b, rb, rs, j0, offs_t, BN, TP, SPLIT)
            if ACC:
                acc += tl.exp2(x)
            else:
                acc += tl.sum(tl.exp2(x), axis=1)
        if ACC:
            l_i = tl.sum(acc, axis=1)
        else:
            l_i = acc
        tl.store(part_ptr + (tl.program_id(2) * tl.num_programs(0) + b) * K + rows, l_i, mask=rows < kb)


@triton.jit
def sinkhorn_update_kernel(
    zb_ptr, zs_ptr,  # [B, KP, TP] augmented points; this kernel writes the p (F side) or q lane
    hs_ptr,  # [B, K] ||y||^2 / 2
    nvalid_ptr,  # [B] int64 K_b
    pot_ptr,  # [B, K] base-2 potential updated by this half-step (F or G)
    part_ptr,  # [NSPLIT, B, K] partial row sums from sinkhorn_row_sums_kernel
    prev_delta_ptr,  # [B] stopping statistic of the previous iteration
    next_delta_ptr,  # [B] this iteration's (atomic max; only when WRITE_DELTA)
    tol_ptr,  # [1] the stopping tolerance in the compute dtype (a float argument would be fp32)
    K, KP, NSPLIT,
    T: tl.constexpr, TP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    G_SIDE: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr, WRITE_DELTA: tl.constexpr,
    SHIFT_LO: tl.constexpr, SHIFT_HI: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    i0 = tl.program_id(1) * BM
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    if (i0 < kb) & (kb >= 2) & (tl.load(prev_delta_ptr + b) > tl.load(tol_ptr)):
        rows = i0 + tl.arange(0, BM)
        row_ok = rows < kb
        l_i = tl.zeros([BM], COMPUTE)
        for sp in range(0, NSPLIT):  # fixed order: deterministic
            l_i += tl.load(part_ptr + (sp * tl.num_programs(0) + b) * K + rows, mask=row_ok, other=1.0)
        ok = ((l_i >= SHIFT_LO) & (l_i <= SHIFT_HI)) | (rows >= kb)
        lse = tl.log2(l_i)
        offs_t = tl.arange(0, TP)
        zb_b = zb_ptr + b * KP * TP
        zs_b = zs_ptr + b * KP * TP
        if tl.min(ok.to(tl.int32), axis=0) == 0:  # the shift failed somewhere: online pass
            rb, rs = row_operand(load_points(zb_b, zs_b, rows, offs_t, TP, SPLIT), offs_t, T, G_SIDE, SPLIT)
            m_i = tl.full([BM], float("-inf"), COMPUTE)
            l_i = tl.zeros([BM], COMPUTE)
            for j0 in range(0, kb, BN):
                x, cols = column_logits(zb_b, zs_b, rb, rs, j0, offs_t, BN, TP, SPLIT)
                x = tl.where((rows[:, None] == cols[None, :]) | (cols[None, :] >= kb), float("-inf"), x)
                m_new = tl.maximum(m_i, tl.max(x, axis=1))
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
                l_i = l_i * tl.exp2(m_i - m_use) + tl.sum(tl.exp2(x - m_use[:, None]), axis=1)
                m_i = m_new
            lse = tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log2(tl.where(row_ok, l_i, 1.0))
        old = tl.load(pot_ptr + b * K + rows, mask=row_ok, other=0.0)
        new = old - lse
        tl.store(pot_ptr + b * K + rows, new, mask=row_ok)
        store_lane(zb_ptr, zs_ptr, hs_ptr, b, rows, new, row_ok, K, KP, T, TP, G_SIDE, SPLIT)  # the new p or q
        if WRITE_DELTA:
            d = tl.where(row_ok, tl.abs(new - old), 0.0)
            tl.atomic_max(next_delta_ptr + b, tl.max(d, axis=0) * tl.full((), LN2, COMPUTE))
