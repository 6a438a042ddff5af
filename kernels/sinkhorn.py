"""Algorithm 1's half-steps on the augmented points Z (docs/triton.md, "Sinkhorn").

F side, per row i (base 2; G side with p and q swapped):
``F_i <- F_i - log2 sum_{j != i, j < K_b} 2^(<y_i, y_j> + p_i + q_j)``, ``p = F - hs``, ``q = G - hs``.

One launch per half-step, ``sinkhorn_half_step_kernel``, grid ``(B, row blocks, column shares)``:
each program sums the ``2^x`` of its share of column tiles (the previous ``p_i`` is the shift: no
running max). With one share it then updates its rows itself; with several, each share writes
its partial sums and the last one to finish (a ticket counter per row block) adds them in a fixed
order and updates the rows. The update redoes rows whose sum left ``[SHIFT_LO, SHIFT_HI]`` with
an online max, writes the potential, its lane of Z and, on the G side, the per-sample stopping
statistic. A sample with ``prev_delta <= tol`` or ``K_b < 2`` does nothing.

The update of one row block runs while other blocks still stream their columns: they read the
lane it writes (p on the F side) only through a row operand that multiplies it by 0, and the
rows it writes only as columns, so no program sees a half-updated value.
"""
import triton
import triton.language as tl

from .common import LN2, column_logits, load_points, row_operand, store_lane


@triton.jit
def column_share(kb, i0, BM: tl.constexpr, BN: tl.constexpr):
    """This program's share of the column tiles, ``[c0, c1)`` (whole tiles), and the tiles that
    meet the diagonal of its row block, ``[d0, d1)``."""
    n_tiles = tl.cdiv(kb, BN)
    per = tl.cdiv(n_tiles, tl.num_programs(2)) * BN
    c0 = tl.program_id(2) * per
    c1 = tl.minimum(n_tiles * BN, c0 + per)
    d0 = (i0 // BN) * BN
    d1 = tl.cdiv(i0 + BM, BN) * BN
    return c0, c1, d0, d1


@triton.jit
def shifted_row_sums(zb_b, zs_b, rb, rs, rows, offs_t, c0, c1, d0, d1, BM: tl.constexpr, BN: tl.constexpr,
                     TP: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr, ACC: tl.constexpr):
    """``sum_j 2^x_ij`` over the columns ``[c0, c1)`` but ``j = i``: the tiles that meet the
    diagonal are peeled into their own loop (the only one with a select)."""
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
        return tl.sum(acc, axis=1)
    else:
        return acc


@triton.jit
def online_row_lse(zb_b, zs_b, rows, offs_t, kb, T: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                   TP: tl.constexpr, G_SIDE: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr):
    """``log2 sum_{j != i, j < K_b} 2^x_ij`` with a running max (rows whose shifted sum left the
    window; a row of -inf gives 0, not NaN). Rebuilds the row operand: keeping the hot loop's
    alive until here would cost the hot loop its occupancy (160 registers instead of 124)."""
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
    return tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log2(tl.where(rows < kb, l_i, 1.0))


@triton.jit
def sinkhorn_half_step_kernel(
    zb_ptr, zs_ptr,  # [B, KP, TP] augmented points (zs only when SPLIT); the p (F side) or q lane is rewritten
    hs_ptr,  # [B, K] ||y||^2 / 2
    nvalid_ptr,  # [B] int64 K_b
    pot_ptr,  # [B, K] base-2 potential updated by this half-step (F or G)
    part_ptr,  # [NSPLIT, B, K] partial row sums (only with several shares)
    ticket_ptr,  # [B, row blocks] int32 zeros: shares finished per row block (the last one resets it)
    prev_delta_ptr,  # [B] stopping statistic of the previous iteration (+inf before the first)
    next_delta_ptr,  # [B] this iteration's (atomic max; only when WRITE_DELTA)
    tol_ptr,  # [1] the stopping tolerance in the compute dtype (a float argument would be fp32)
    K, KP,
    T: tl.constexpr, TP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    G_SIDE: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr, ACC: tl.constexpr,
    WRITE_DELTA: tl.constexpr, SHIFT_LO: tl.constexpr, SHIFT_HI: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    i0 = tl.program_id(1) * BM
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    if (i0 < kb) & (kb >= 2) & (tl.load(prev_delta_ptr + b) > tl.load(tol_ptr)):
        rows = i0 + tl.arange(0, BM)
        row_ok = rows < kb
        offs_t = tl.arange(0, TP)
        zb_b = zb_ptr + b * KP * TP
        zs_b = zs_ptr + b * KP * TP
        rb, rs = row_operand(load_points(zb_b, zs_b, rows, offs_t, TP, SPLIT), offs_t, T, G_SIDE, SPLIT)
        c0, c1, d0, d1 = column_share(kb, i0, BM, BN)
        l_i = shifted_row_sums(zb_b, zs_b, rb, rs, rows, offs_t, c0, c1, d0, d1, BM, BN, TP, SPLIT, COMPUTE, ACC)
        nsplit = tl.num_programs(2)
        last = nsplit == 1
        if nsplit > 1:
            tl.store(part_ptr + (tl.program_id(2) * tl.num_programs(0) + b) * K + rows, l_i, mask=row_ok)
            tl.debug_barrier()  # every thread's partial sums are written before the ticket is taken
            ticket = ticket_ptr + b * tl.num_programs(1) + tl.program_id(1)
            last = tl.atomic_add(ticket, 1, sem="acq_rel") == nsplit - 1
            if last:  # the others' sums are in memory: add them in a fixed order (deterministic)
                l_i = tl.zeros([BM], COMPUTE)
                for sp in range(0, nsplit):  # .cg: from L2, never a stale L1 line
                    l_i += tl.load(part_ptr + (sp * tl.num_programs(0) + b) * K + rows, mask=row_ok, other=1.0,
                                   cache_modifier=".cg")
                tl.store(ticket, 0)
        if last:
            l_i = tl.where(row_ok, l_i, 1.0)
            lse = tl.log2(l_i)
            ok = ((l_i >= SHIFT_LO) & (l_i <= SHIFT_HI)) | (rows >= kb)
            if tl.min(ok.to(tl.int32), axis=0) == 0:  # the shift failed somewhere: online pass
                lse = online_row_lse(zb_b, zs_b, rows, offs_t, kb, T, BM, BN, TP, G_SIDE, SPLIT, COMPUTE)
            old = tl.load(pot_ptr + b * K + rows, mask=row_ok, other=0.0)
            new = old - lse
            tl.store(pot_ptr + b * K + rows, new, mask=row_ok)
            store_lane(zb_ptr, zs_ptr, hs_ptr, b, rows, new, row_ok, K, KP, T, TP, G_SIDE, SPLIT)  # the new p or q
            if WRITE_DELTA:
                d = tl.where(row_ok, tl.abs(new - old), 0.0)
                tl.atomic_max(next_delta_ptr + b, tl.max(d, axis=0) * tl.full((), LN2, COMPUTE))
