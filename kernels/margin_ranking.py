"""Eq. 4 and its gradient w.r.t. the student in one pass (docs/triton.md, "Loss kernel").

:func:`margin_ranking_symmetric_kernel` (the default for "ot", "uniform", "random") visits each
unordered pair once; :func:`margin_ranking_kernel` (``loss_sym=0``, and "uncertainty") every ordered
pair, as follows. A program owns ``BM`` rows of one sample (answers in teacher order) and visits
every column tile: upper pairs (``j >= tie_hi_i``) add ``max(0, m W_ij - (s_i - s_j))`` to the loss
and count -1 when active; lower pairs (``j < tie_lo_i``) count +1 when ``m W_ji - (s_j - s_i) > 0``.
Outputs per (sample, row block) hinge sums and, per row, the gradient: its count times ``1 / |R_p|``
written at the answer's column of the student's [B, N] (no atomics: each answer is one row of one
program). W by ``MODE``: 0 "ot" ``2^(<y_i, y_j> + p_i + q_j)`` from Z, 1 "uniform", 2 "random" (the
hash of radi_fast._random), 3 "uncertainty" ``1 / (U + EPS)`` from the direct difference of
lane-major points.
"""
import triton
import triton.language as tl

from .common import LN2, column_logits, load_points, lowbias32, moving_logits, row_operand

UNIFORM_SCALE = tl.constexpr(1.0 / (1 << 24))


@triton.jit
def pair_scale(npairs_ptr, b, COMPUTE: tl.constexpr):
    """``1 / |R_p|`` of sample b in the compute dtype (0 without ordered pairs), rounded to
    nearest as PyTorch's ``1 / n`` (an fp32 "/" in Triton is div.full: 2 ulp)."""
    n_pairs = tl.load(npairs_ptr + b).to(COMPUTE)
    if COMPUTE == tl.float32:
        inv = tl.math.div_rn(tl.full((), 1.0, COMPUTE), tl.maximum(n_pairs, 1.0))
    else:
        inv = 1.0 / tl.maximum(n_pairs, 1.0)
    return tl.where(n_pairs > 0, inv, 0.0)


@triton.jit
def _weights(zb_b, zs_b, yt_b, rb, rs, rows, h_rows, ids_b, hrow, u_scale, j0, offs_t, KP,
             T: tl.constexpr, TP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, MODE: tl.constexpr,
             LOWER: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr, EPS: tl.constexpr):
    """W of the [BM, BN] tile at columns j0 (upper: W_ij; LOWER: W_ji); symmetric modes give the
    same bits both ways (ot: the same up to the order of the product's additions)."""
    cols = j0 + tl.arange(0, BN)
    if MODE == 0:
        x, cols = column_logits(zb_b, zs_b, rb, rs, j0, offs_t, BN, TP, SPLIT)
        w = tl.exp2(x)
    elif MODE == 1:
        w = tl.full([BM, BN], 1.0, COMPUTE)
    elif MODE == 2:
        idj = tl.load(ids_b + cols).to(tl.uint32)
        if LOWER:  # hash(row, id_j, id_i)
            h = lowbias32(lowbias32(hrow ^ idj)[None, :] ^ tl.load(ids_b + rows).to(tl.uint32)[:, None])
        else:  # hash(row, id_i, id_j); h_rows = lowbias32(hrow ^ id_i)
            h = lowbias32(h_rows[:, None] ^ idj[None, :])
        w = (h >> 8).to(COMPUTE) * UNIFORM_SCALE
    else:
        d2 = tl.zeros([BM, BN], COMPUTE)
        for t in tl.static_range(T):  # lane-major copy of y: coalesced loads
            diff = tl.load(yt_b + t * KP + rows)[:, None] - tl.load(yt_b + t * KP + cols)[None, :]
            d2 += diff * diff
        w = 1.0 / (d2 * u_scale + tl.full((), EPS, COMPUTE))
    return w, cols


@triton.jit
def margin_ranking_kernel(
    zb_ptr, zs_ptr,  # [B, KP, TP] augmented points with the final potentials (MODE 0)
    yt_ptr,  # [B, TP, KP] the points y, lane-major (MODE 3)
    nvalid_ptr,  # [B] int64 K_b
    lam_ptr,  # [B] lam (MODE 3: U = ||y_i - y_j||^2 lam ln2 / 2)
    tie_lo_ptr, tie_hi_ptr,  # [B, KP] int32: answer i's teacher tie group is [tie_lo_i, tie_hi_i)
    student_ptr,  # [B, KP] student scores in teacher order, -inf past K_b
    ids_ptr,  # [B, KP] int64 answer ids (MODE 2)
    rowhash_ptr,  # [B] int64 holding uint32 lowbias32(lowbias32(seed) ^ b) (MODE 2)
    order_ptr,  # [B, K] int64 answer ids in teacher order: where each row's gradient goes
    npairs_ptr,  # [B] int64 |R_p|
    loss_part_ptr,  # out [B, NB] partial hinge sums
    scale_ptr,  # out [B] 1 / |R_p| in the compute dtype (0 without ordered pairs)
    grad_ptr,  # out [B, N] compute dtype, zero-filled by the caller: rows' gradients at their answers
    margin_ptr,  # [1] the margin m in the compute dtype (a float argument would be fp32)
    K, KP, NB, N,
    MODE: tl.constexpr, T: tl.constexpr, TP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    SPLIT: tl.constexpr, COMPUTE: tl.constexpr, EPS: tl.constexpr,  # EPS: the "uncertainty" mode's 1e-6
):
    b = tl.program_id(0).to(tl.int64)
    ib = tl.program_id(1)
    i0 = ib * BM
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    rows = i0 + tl.arange(0, BM)
    loss_rows = tl.zeros([BM], COMPUTE)
    cnt_rows = tl.zeros([BM], tl.int32)
    scale = pair_scale(npairs_ptr, b, COMPUTE)
    if i0 < kb:
        kvec = b * KP
        row_ok = rows < kb
        offs_t = tl.arange(0, TP)
        zb_b = zb_ptr + b * KP * TP
        zs_b = zs_ptr + b * KP * TP
        yt_b = yt_ptr + b * KP * TP
        ids_b = ids_ptr + kvec
        s_b = student_ptr + kvec
        # padded rows get +inf: every upper hinge of theirs is -inf (their counts are not stored)
        si = tl.where(row_ok, tl.load(s_b + rows).to(COMPUTE), float("inf"))
        lo_i = tl.load(tie_lo_ptr + kvec + rows)
        hi_i = tl.load(tie_hi_ptr + kvec + rows)
        # operands of the weights (unused ones are placeholders the compiler drops)
        rb_up = si[:, None]
        rs_up = si[:, None]
        rb_lo = si[:, None]
        rs_lo = si[:, None]
        h_rows = rows.to(tl.uint32)
        hrow = tl.zeros([], tl.uint32)
        u_scale = tl.zeros([], COMPUTE)
        margin = tl.load(margin_ptr)
        if MODE == 0:
            z_rows = load_points(zb_b, zs_b, rows, offs_t, TP, SPLIT)
            rb_up, rs_up = row_operand(z_rows, offs_t, T, 0, SPLIT)
            rb_lo, rs_lo = row_operand(z_rows, offs_t, T, 1, SPLIT)
        if MODE == 2:
            hrow = tl.load(rowhash_ptr + b).to(tl.uint32)
            h_rows = lowbias32(hrow ^ tl.load(ids_b + rows).to(tl.uint32))
        if MODE == 3:
            u_scale = tl.load(lam_ptr + b).to(COMPUTE) * tl.full((), 0.5 * LN2, COMPUTE)
        # column tiles: [0, m0) are teacher-ahead of every row (lower pairs, all ordered);
        # [m1, n_cols) teacher-behind every row (upper pairs, all ordered); [m0, m1), around the
        # diagonal and any tie group, is checked pair by pair
        n_cols = tl.cdiv(kb, BN) * BN
        m0 = (tl.min(tl.where(row_ok, lo_i, kb), axis=0) // BN) * BN
        m1 = tl.minimum(tl.cdiv(tl.max(tl.where(row_ok, hi_i, 0), axis=0), BN) * BN, n_cols)
        for j0 in range(0, m0, BN):  # lower: h_ji = m W_ji - (s_j - s_i)
            w, cols = _weights(zb_b, zs_b, yt_b, rb_lo, rs_lo, rows, h_rows, ids_b, hrow, u_scale, j0, offs_t, KP,
                               T, TP, BM, BN, MODE, True, SPLIT, COMPUTE, EPS)
            sj = tl.load(s_b + cols).to(COMPUTE)
            h = margin * w + (si[:, None] - sj[None, :])  # the bits of row j's upper pass
            cnt_rows += tl.sum((h > 0.0).to(tl.int32), axis=1)
        for j0 in range(m0, m1, BN):  # both kinds, ordered pairs by tie group
            w, cols = _weights(zb_b, zs_b, yt_b, rb_lo, rs_lo, rows, h_rows, ids_b, hrow, u_scale, j0, offs_t, KP,
                               T, TP, BM, BN, MODE, True, SPLIT, COMPUTE, EPS)
            sj = tl.load(s_b + cols).to(COMPUTE)
            h = margin * w + (si[:, None] - sj[None, :])
            lower = (cols[None, :] < lo_i[:, None]) & (h > 0.0)
            w, cols = _weights(zb_b, zs_b, yt_b, rb_up, rs_up, rows, h_rows, ids_b, hrow, u_scale, j0, offs_t, KP,
                               T, TP, BM, BN, MODE, False, SPLIT, COMPUTE, EPS)
            h = margin * w + (sj[None, :] - si[:, None])
            upper = (cols[None, :] >= hi_i[:, None]) & (h > 0.0)
            loss_rows += tl.sum(tl.where(upper, h, 0.0), axis=1)
            cnt_rows += tl.sum(lower.to(tl.int32), axis=1) - tl.sum(upper.to(tl.int32), axis=1)
        for j0 in range(m1, n_cols, BN):  # upper: h_ij = m W_ij - (s_i - s_j); padded columns: -inf
            w, cols = _weights(zb_b, zs_b, yt_b, rb_up, rs_up, rows, h_rows, ids_b, hrow, u_scale, j0, offs_t, KP,
                               T, TP, BM, BN, MODE, False, SPLIT, COMPUTE, EPS)
            sj = tl.load(s_b + cols).to(COMPUTE)
            h = margin * w + (sj[None, :] - si[:, None])
            loss_rows += tl.sum(tl.maximum(h, 0.0), axis=1)
            cnt_rows -= tl.sum((h > 0.0).to(tl.int32), axis=1)
        ids = tl.load(order_ptr + b * K + rows, mask=row_ok, other=0)
        tl.store(grad_ptr + b * N + ids, cnt_rows.to(COMPUTE) * scale, mask=row_ok)
    if ib == 0:
        tl.store(scale_ptr + b, scale)
    tl.store(loss_part_ptr + b * NB + ib, tl.sum(loss_rows, axis=0))


@triton.jit
def _stationary_weights(zb_b, zs_b, rbt, rst, i0, rows, ids_b, h_cols, offs_t, TP: tl.constexpr, BS: tl.constexpr,
                        MODE: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr):
    """W of the pairs (a = column j, b = row i) of one [BS, BS] tile of the symmetric kernel:
    the stationary answers ``cols`` are teacher-ahead of the moving ``rows``. The bits of
    :func:`_weights` for row a's upper pass ("ot": up to the order of the product's additions)."""
    if MODE == 0:  # Z_i times [y_j, 0, 1, p_j]: <y_i, y_j> + q_i + p_j, the plan's W_ji
        x, _ = moving_logits(zb_b, zs_b, rbt, rst, i0, offs_t, BS, TP, SPLIT)
        w = tl.exp2(x)
    elif MODE == 1:
        w = tl.full([BS, BS], 1.0, COMPUTE)
    else:  # hash(row, id_j, id_i); h_cols = lowbias32(hrow ^ id_j)
        h = lowbias32(h_cols[None, :] ^ tl.load(ids_b + rows).to(tl.uint32)[:, None])
        w = (h >> 8).to(COMPUTE) * UNIFORM_SCALE
    return w


@triton.jit
def _hinge_tile(zb_b, zs_b, rbt, rst, s_b, work_b, sj, hi_j, ids_b, h_cols, margin, i0, offs_t, TP: tl.constexpr,
                BS: tl.constexpr, MODE: tl.constexpr, MASKED: tl.constexpr, SPLIT: tl.constexpr,
                COMPUTE: tl.constexpr):
    """One moving tile (rows ``i0 .. i0 + BS``, all teacher-behind or level with the stationary
    columns): ``h = m W_ji - (s_j - s_i)``; adds each row's count of active hinges to its gradient
    count (integer atomics: exact in any order). Returns ``(sum of max(h, 0) per row, [h > 0])``.
    ``MASKED``: the pair counts only if ``i >= tie_hi_j`` (the diagonal tile and tie groups)."""
    rows = i0 + tl.arange(0, BS)
    w = _stationary_weights(zb_b, zs_b, rbt, rst, i0, rows, ids_b, h_cols, offs_t, TP, BS, MODE, SPLIT, COMPUTE)
    si = tl.load(s_b + rows).to(COMPUTE)  # -inf past K_b: every hinge of a padded row is -inf
    h = margin * w + (si[:, None] - sj[None, :])
    if MASKED:
        h = tl.where(rows[:, None] >= hi_j[None, :], h, float("-inf"))
    pos = (h > 0.0).to(tl.int32)
    # unmasked (zeros included): a mask is one more layout conversion through shared memory, with
    # a block barrier, per tile
    tl.atomic_add(work_b + rows, tl.sum(pos, axis=1), sem="relaxed")
    return tl.sum(tl.maximum(h, 0.0), axis=1), pos


@triton.jit
def margin_ranking_symmetric_kernel(
    zb_ptr, zs_ptr,  # [B, KP, TP] augmented points with the final potentials (MODE 0)
    nvalid_ptr,  # [B] int64 K_b
    tie_hi_ptr,  # [B, KP] int32: answer j's teacher tie group ends at tie_hi_j
    student_ptr,  # [B, KP] student scores in teacher order, -inf past K_b
    ids_ptr,  # [B, KP] int64 answer ids (MODE 2)
    rowhash_ptr,  # [B] int64 holding uint32 lowbias32(lowbias32(seed) ^ b) (MODE 2)
    order_ptr,  # [B, K] int64 answer ids in teacher order: where each answer's gradient goes
    npairs_ptr,  # [B] int64 |R_p|
    loss_part_ptr,  # [B, NB] scratch: each stationary block's hinge sum
    work_ptr,  # [B, KP + 1] int32 zeros: each answer's gradient count, then the sample's ticket
    loss_ptr,  # out [B] the sample's eq. 4 loss
    grad_ptr,  # out [B, N] compute dtype, zero-filled by the caller: the answers' gradients
    margin_ptr,  # [1] the margin m in the compute dtype
    K, KP, NB, N,
    MODE: tl.constexpr, T: tl.constexpr, TP: tl.constexpr, BS: tl.constexpr,
    SPLIT: tl.constexpr, COMPUTE: tl.constexpr,
):
    """Eq. 4 and its gradient visiting each unordered pair of answers once (docs/triton.md, "Loss
    kernel"). Program (b, J) holds block J of ``BS`` answers as the stationary columns and streams
    the blocks ``I = J .. n - 1`` (teacher-behind or level) as moving rows: per pair (a = j, b = i)
    one weight, ``h = m W_ji - (s_j - s_i)``, active if ``i >= tie_hi_j``; the moving rows' counts
    (+1 per active positive hinge) go out per tile by integer atomics, the stationary answers'
    (-1) accumulate per pair and go out once. The program that lands the sample's last block
    (ticket) sums the blocks' hinge sums in a fixed order and writes the loss and every answer's
    gradient ``count / |R_p|``: deterministic. MODE 0 "ot", 1 "uniform", 2 "random" (as
    :func:`margin_ranking_kernel`; "uncertainty" stays there: its hoisted lanes spill here)."""
    tl.static_assert(MODE != 3)
    b = tl.program_id(0).to(tl.int64)
    J = tl.program_id(1)
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    if (J == 0) & (kb == 0):
        tl.store(loss_ptr + b, tl.zeros([], COMPUTE))
    if J * BS < kb:
        n = tl.cdiv(kb, BS)
        kvec = b * KP
        work_b = work_ptr + b * (KP + 1)
        s_b = student_ptr + kvec
        ids_b = ids_ptr + kvec
        offs_t = tl.arange(0, TP)
        zb_b = zb_ptr + b * KP * TP
        zs_b = zs_ptr + b * KP * TP
        cols = J * BS + tl.arange(0, BS)
        col_ok = cols < kb
        # padded columns get +inf: every hinge with them is -inf
        sj = tl.where(col_ok, tl.load(s_b + cols).to(COMPUTE), float("inf"))
        hi_j = tl.load(tie_hi_ptr + kvec + cols)
        rbt = sj[None, :]  # placeholders the compiler drops (MODE != 0)
        rst = sj[None, :]
        h_cols = cols.to(tl.uint32)
        margin = tl.load(margin_ptr)
        if MODE == 0:
            rb, rs = row_operand(load_points(zb_b, zs_b, cols, offs_t, TP, SPLIT), offs_t, T, 0, SPLIT)
            rbt = tl.trans(rb)
            rst = tl.trans(rs)
        if MODE == 2:
            hrow = tl.load(rowhash_ptr + b).to(tl.uint32)
            h_cols = lowbias32(hrow ^ tl.load(ids_b + cols).to(tl.uint32))
        loss_rows = tl.zeros([BS], COMPUTE)
        down = tl.zeros([BS, BS], tl.int32)  # per pair: the stationary answers' active hinges, reduced once
        # moving blocks [J, m1) hold rows level with some column's tie group (the diagonal block
        # always): checked pair by pair; [m1, n) are teacher-behind every column: all ordered
        m1 = tl.minimum(tl.maximum(tl.cdiv(tl.max(tl.where(col_ok, hi_j, 0), axis=0), BS), J + 1), n)
        for I in range(J, m1):
            part, pos = _hinge_tile(zb_b, zs_b, rbt, rst, s_b, work_b, sj, hi_j, ids_b, h_cols, margin, I * BS,
                                    offs_t, TP, BS, MODE, True, SPLIT, COMPUTE)
            loss_rows += part
            down += pos
        for I in range(m1, n):
            part, pos = _hinge_tile(zb_b, zs_b, rbt, rst, s_b, work_b, sj, hi_j, ids_b, h_cols, margin, I * BS,
                                    offs_t, TP, BS, MODE, False, SPLIT, COMPUTE)
            loss_rows += part
            down += pos
        tl.atomic_add(work_b + cols, -tl.sum(down, axis=0), mask=col_ok, sem="relaxed")
        tl.store(loss_part_ptr + b * NB + J, tl.sum(loss_rows, axis=0))
        tl.debug_barrier()  # every thread's counts and the hinge sum are out before the ticket
        if tl.atomic_add(work_b + KP, 1, sem="acq_rel") == n - 1:
            tl.debug_barrier()  # every thread after the ticket's acquire
            scale = pair_scale(npairs_ptr, b, COMPUTE)
            total = tl.zeros([BS], COMPUTE)
            for c0 in range(0, n, BS):  # fixed order; .cg: from L2, never a stale L1 line
                blk = c0 + tl.arange(0, BS)
                total += tl.load(loss_part_ptr + b * NB + blk, mask=blk < n, other=0.0, cache_modifier=".cg")
            tl.store(loss_ptr + b, tl.sum(total, axis=0) * scale)
            for r0 in range(0, kb, BS):
                r = r0 + tl.arange(0, BS)
                ok = r < kb
                cnt = tl.load(work_b + r, mask=ok, other=0, cache_modifier=".cg")
                ids = tl.load(order_ptr + b * K + r, mask=ok, other=0)
                tl.store(grad_ptr + b * N + ids, cnt.to(COMPUTE) * scale, mask=ok)


@triton.jit
def pair_uniform_kernel(rowhash_ptr, ids_i_ptr, ids_j_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Test helper: the "random" mode's weight of pairs (row, ids_i[k], ids_j[k]) in fp32."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    hr = tl.load(rowhash_ptr + offs, mask=ok, other=0).to(tl.uint32)
    hi = lowbias32(hr ^ tl.load(ids_i_ptr + offs, mask=ok, other=0).to(tl.uint32))
    h = lowbias32(hi ^ tl.load(ids_j_ptr + offs, mask=ok, other=0).to(tl.uint32))
    tl.store(out_ptr + offs, (h >> 8).to(tl.float32) * UNIFORM_SCALE, mask=ok)
