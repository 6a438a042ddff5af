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

from .common import LN2, column_logits, load_points, moving_logits, row_operand, store_lane, symmetric_operand


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
def finish_rows(zb_ptr, zs_ptr, hs_ptr, pot_ptr, other_ptr, next_delta_ptr, next_rng_ptr, b, rows, l_i, shift, kb, K,
                KP, T: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, TP: tl.constexpr, G_SIDE: tl.constexpr,
                SPLIT: tl.constexpr, COMPUTE: tl.constexpr, WRITE_DELTA: tl.constexpr, SYM_BASE: tl.constexpr,
                RECORD_RANGE: tl.constexpr, SHIFT_LO: tl.constexpr, SHIFT_HI: tl.constexpr):
    """The update of ``rows`` from their summed ``l_i``: the new potential is ``old - log2 l_i``
    (shifted pass) or ``other + shift - log2 l_i`` (``SYM_BASE``: the symmetric pass, ``other``
    the other potential, ``shift`` the sample's), or, where a row's sum left ``[SHIFT_LO, SHIFT_HI]``, ``old``
    minus the online pass's log-sum (every row of the block). Writes the potential, its lane of Z,
    on the G side the stopping statistic and, with ``RECORD_RANGE``, the range of ``F - G`` (the
    symmetric kernel's shift in the next half-step)."""
    row_ok = rows < kb
    offs_t = tl.arange(0, TP)
    zb_b = zb_ptr + b * KP * TP
    zs_b = zs_ptr + b * KP * TP
    l_i = tl.where(row_ok, l_i, 1.0)
    old = tl.load(pot_ptr + b * K + rows, mask=row_ok, other=0.0)
    if SYM_BASE or RECORD_RANGE:
        other = tl.load(other_ptr + b * K + rows, mask=row_ok, other=0.0)
    ok = ((l_i >= SHIFT_LO) & (l_i <= SHIFT_HI)) | (rows >= kb)
    if tl.min(ok.to(tl.int32), axis=0) == 0:  # the shift failed somewhere: online pass
        new = old - online_row_lse(zb_b, zs_b, rows, offs_t, kb, T, BM, BN, TP, G_SIDE, SPLIT, COMPUTE)
    else:
        if SYM_BASE:
            new = other + shift - tl.log2(l_i)
        else:
            new = old - tl.log2(l_i)
    tl.store(pot_ptr + b * K + rows, new, mask=row_ok)
    store_lane(zb_ptr, zs_ptr, hs_ptr, b, rows, new, row_ok, K, KP, T, TP, G_SIDE, SPLIT)  # the new p or q
    if WRITE_DELTA:
        d = tl.where(row_ok, tl.abs(new - old), 0.0)
        tl.atomic_max(next_delta_ptr + b, tl.max(d, axis=0) * tl.full((), LN2, COMPUTE))
    if RECORD_RANGE:  # F - G of these rows: (max, max of the negation)
        e = new - other if G_SIDE == 0 else other - new
        tl.atomic_max(next_rng_ptr + 2 * b, tl.max(tl.where(row_ok, e, float("-inf")), axis=0))
        tl.atomic_max(next_rng_ptr + 2 * b + 1, tl.max(tl.where(row_ok, -e, float("-inf")), axis=0))


@triton.jit
def shifted_half_step(zb_ptr, zs_ptr, hs_ptr, pot_ptr, other_ptr, part_ptr, ticket_ptr, next_delta_ptr, next_rng_ptr,
                      b, kb, K, KP, T: tl.constexpr, TP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                      G_SIDE: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr, ACC: tl.constexpr,
                      WRITE_DELTA: tl.constexpr, RECORD_RANGE: tl.constexpr, SHIFT_LO: tl.constexpr,
                      SHIFT_HI: tl.constexpr):
    """One program of the shifted pass: its row block's sums over its share of the column tiles;
    the last share of the row block (ticket) adds the shares' sums and updates the rows."""
    i0 = tl.program_id(1) * BM
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
        finish_rows(zb_ptr, zs_ptr, hs_ptr, pot_ptr, other_ptr, next_delta_ptr, next_rng_ptr, b, rows, l_i, 0.0, kb,
                    K, KP, T, BM, BN, TP, G_SIDE, SPLIT, COMPUTE, WRITE_DELTA, False, RECORD_RANGE, SHIFT_LO, SHIFT_HI)


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
        shifted_half_step(zb_ptr, zs_ptr, hs_ptr, pot_ptr, pot_ptr, part_ptr, ticket_ptr, next_delta_ptr,
                          next_delta_ptr, b, kb, K, KP, T, TP, BM, BN, G_SIDE, SPLIT, COMPUTE, ACC, WRITE_DELTA,
                          False, SHIFT_LO, SHIFT_HI)


@triton.jit
def symmetric_received(R, n):
    """Row block R's sums from other blocks' programs (the cyclic schedule of
    :func:`sinkhorn_symmetric_half_step_kernel`): (n - 1) // 2, or with n even n / 2 - 1 plus the
    pair at distance n / 2 for the second half of the blocks."""
    return tl.where(n % 2 == 1, (n - 1) // 2, n // 2 - 1 + (R >= n // 2).to(tl.int32))


@triton.jit
def symmetric_update(zb_ptr, zs_ptr, hs_ptr, pot_ptr, other_ptr, part_ptr, next_delta_ptr, next_rng_ptr, b, R, n,
                     nsplit, kb, shift, K, KP, NSLOT, T: tl.constexpr, TP: tl.constexpr, BS: tl.constexpr,
                     G_SIDE: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr, WRITE_DELTA: tl.constexpr,
                     SHIFT_LO: tl.constexpr, SHIFT_HI: tl.constexpr):
    """Row block R's update once every sum of its rows is in memory: its own shares' slots, then
    the slots of the blocks at distance 1, 2, ... that covered it, in that order (deterministic)."""
    tl.debug_barrier()  # every thread after the ticket's acquire (it reached some threads by a shuffle)
    rows = R * BS + tl.arange(0, BS)
    slots = part_ptr + ((b * tl.num_programs(1) + R) * NSLOT) * BS + tl.arange(0, BS)
    m_i = tl.zeros([BS], COMPUTE)
    for s in range(0, nsplit):  # .cg: from L2, never a stale L1 line
        m_i += tl.load(slots + s * BS, cache_modifier=".cg")
    for d in range(1, symmetric_received(R, n) + 1):
        m_i += tl.load(slots + (nsplit + d - 1) * BS, cache_modifier=".cg")
    finish_rows(zb_ptr, zs_ptr, hs_ptr, pot_ptr, other_ptr, next_delta_ptr, next_rng_ptr, b, rows, m_i, shift, kb, K,
                KP, T, BS, BS, TP, G_SIDE, SPLIT, COMPUTE, WRITE_DELTA, True, True, SHIFT_LO, SHIFT_HI)


@triton.jit(do_not_specialize=["gate_row", "rng_row"])
def sinkhorn_symmetric_half_step_kernel(
    zb_ptr, zs_ptr,  # [B, KP, TP] augmented points, as sinkhorn_half_step_kernel
    hs_ptr,  # [B, K]
    nvalid_ptr,  # [B] int64 K_b
    pot_ptr,  # [B, K] base-2 potential updated by this half-step (F or G)
    other_ptr,  # [B, K] the other potential (G or F): read only
    part_ptr,  # [B, row blocks, NSLOT, BS] partial sums (the shifted fallback reads it as [NSPLIT, B, K])
    ticket_ptr,  # [B, row blocks] int32 zeros: contributions landed per row block (the last one resets it)
    gate_ptr, gate_row,  # [rows, B] stopping statistics: row gate_row the previous iteration's (as
    # sinkhorn_half_step_kernel's prev_delta), the next row this one's (atomic max, when WRITE_DELTA)
    rng_ptr, rng_row,  # [rows, B, 2] (max (F - G), max (G - F)): row rng_row after the previous
    # half-step, the next row the same after this one (atomic max from -inf)
    tol_ptr,  # [1]
    K, KP, NSLOT,
    T: tl.constexpr, TP: tl.constexpr, BS: tl.constexpr, BMV: tl.constexpr,
    G_SIDE: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr,
    WRITE_DELTA: tl.constexpr, SHIFT_LO: tl.constexpr, SHIFT_HI: tl.constexpr, SYM_SPREAD: tl.constexpr,
):
    """One half-step that exponentiates each unordered pair once (docs/triton.md, "The symmetric
    half-step"). F side: ``F_i <- G_i + c - log2 m_i``, ``m_i = sum_{j != i} 2^(<y_i, y_j> + q_i +
    q_j + c)``, symmetric in (i, j), with ``c`` the centre of the sample's range of ``F - G``
    (G side: p for q, ``-c``). Program (b, J, share) holds block J's points as the stationary
    operand and streams the blocks ``J + t mod n``, t = 0 (the diagonal block) .. D_J, of its
    share, in tiles of ``BMV`` rows: each tile's row sums go to block ``J + t``'s slot
    ``NSPLIT + t - 1``, its column sums accumulate per pair and go to block J's slot ``share`` at
    the end. The program that lands a block's last contribution (ticket) updates it. A sample
    whose range of ``F - G`` is wider than ``SYM_SPREAD`` (sums out of fp32's reach) runs the
    shifted pass of :func:`sinkhorn_half_step_kernel` in this half-step instead."""
    b = tl.program_id(0).to(tl.int64)
    J = tl.program_id(1)
    # rows of the gate and range buffers as offsets (not views): every launch of a call then has
    # the same arguments but these two integers, so the host relaunches the compiled kernel directly
    B = tl.num_programs(0).to(tl.int64)
    prev_delta_ptr = gate_ptr + gate_row.to(tl.int64) * B
    next_delta_ptr = prev_delta_ptr + B
    prev_rng_ptr = rng_ptr + rng_row.to(tl.int64) * (2 * B)
    next_rng_ptr = prev_rng_ptr + 2 * B
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    if (J * BS < kb) & (kb >= 2) & (tl.load(prev_delta_ptr + b) > tl.load(tol_ptr)):
        hi = tl.load(prev_rng_ptr + 2 * b)
        neg_lo = tl.load(prev_rng_ptr + 2 * b + 1)
        if hi + neg_lo > SYM_SPREAD:
            shifted_half_step(zb_ptr, zs_ptr, hs_ptr, pot_ptr, other_ptr, part_ptr, ticket_ptr, next_delta_ptr,
                              next_rng_ptr, b, kb, K, KP, T, TP, BS, BS, G_SIDE, SPLIT, COMPUTE, False, WRITE_DELTA,
                              True, SHIFT_LO, SHIFT_HI)
        else:
            centre = (hi - neg_lo) * 0.5  # the middle of the range of F - G
            shift = centre if G_SIDE == 0 else -centre
            n = tl.cdiv(kb, BS)
            nsplit = tl.num_programs(2)
            share = tl.program_id(2)
            D = (n - 1) // 2 + ((n % 2 == 0) & (J < n // 2)).to(tl.int32)
            per = tl.cdiv(D + 1, nsplit)
            t0 = share * per
            t1 = tl.minimum(D + 1, t0 + per)
            offs_t = tl.arange(0, TP)
            zb_b = zb_ptr + b * KP * TP
            zs_b = zs_ptr + b * KP * TP
            cols = J * BS + tl.arange(0, BS)
            rb, rs = symmetric_operand(load_points(zb_b, zs_b, cols, offs_t, TP, SPLIT), offs_t, shift, T, G_SIDE,
                                       SPLIT)
            rbt = tl.trans(rb)
            rst = tl.trans(rs)
            slots_b = part_ptr + (b * tl.num_programs(1)) * NSLOT * BS
            acc = tl.zeros([BMV, BS], COMPUTE)  # per pair: the stationary block's sums, reduced once
            SUB: tl.constexpr = BS // BMV  # moving tiles per block
            if t0 == 0:  # the diagonal block: its pairs in both orders, but j = i
                for u in range(0, SUB):
                    x, rows = moving_logits(zb_b, zs_b, rbt, rst, J * BS + u * BMV, offs_t, BMV, TP, SPLIT)
                    acc += tl.exp2(tl.where(rows[:, None] == cols[None, :], float("-inf"), x))
            # the other blocks, one moving tile of BMV rows per iteration (t = v // SUB)
            for v in range(tl.maximum(t0, 1) * SUB, t1 * SUB):
                t = v // SUB
                I = J + t
                I = tl.where(I >= n, I - n, I)
                u = v % SUB
                x, rows = moving_logits(zb_b, zs_b, rbt, rst, I * BS + u * BMV, offs_t, BMV, TP, SPLIT)
                w = tl.exp2(x)
                acc += w
                tl.store(slots_b + (I * NSLOT + nsplit + t - 1) * BS + u * BMV + tl.arange(0, BMV), tl.sum(w, axis=1))
            tl.store(slots_b + (J * NSLOT + share) * BS + tl.arange(0, BS), tl.sum(acc, axis=0))
            tl.debug_barrier()  # every thread's sums are written before the tickets are taken
            # the tickets of block J (its own share) and of the blocks this share covered, 32 at a time
            tickets_b = ticket_ptr + b * tl.num_programs(1)
            t_lo = tl.maximum(t0, 1)
            n_items = 1 + tl.maximum(t1 - t_lo, 0)
            for c0 in range(0, n_items, 32):
                k = c0 + tl.arange(0, 32)
                blk = tl.where(k == 0, J, J + t_lo + k - 1)
                blk = tl.where(blk >= n, blk - n, blk)
                target = nsplit + symmetric_received(blk, n)
                landed = tl.atomic_add(tickets_b + blk, 1, mask=k < n_items, sem="acq_rel") + 1
                is_last = (k < n_items) & (landed == target)
                # one reduction for the chunk: bit k-c0 set where this program completed the block
                bits = tl.sum(tl.where(is_last, tl.full([32], 1, tl.int64) << (k - c0).to(tl.int64), 0), axis=0)
                for kk in range(c0, tl.minimum(c0 + 32, n_items)):
                    if ((bits >> (kk - c0)) & 1) != 0:
                        R = tl.where(kk == 0, J, J + t_lo + kk - 1)
                        R = tl.where(R >= n, R - n, R)
                        tl.store(tickets_b + R, 0)
                        symmetric_update(zb_ptr, zs_ptr, hs_ptr, pot_ptr, other_ptr, part_ptr, next_delta_ptr,
                                         next_rng_ptr, b, R, n, nsplit, kb, shift, K, KP, NSLOT, T, TP, BS, G_SIDE,
                                         SPLIT, COMPUTE, WRITE_DELTA, SHIFT_LO, SHIFT_HI)
