"""Eq. 4, the soft-margin ranking loss, and its gradient w.r.t. the student, in one pass.

Per sample (answers in teacher order, so every ordered pair ``t_i > t_j`` has ``i < j``: a
program owning rows ``[i0, i0 + BM)`` visits only the column tiles from its own diagonal tile on):

    h_ij = max(0, m W_ij - (s_i - s_j))  over  t_i > t_j, i, j < K_b
    loss_b = sum h_ij / |R_p|,   dL/ds_i = (#{j: j > i active} - #{j: i > j active}) / |R_p|

``W`` by margin mode (``MODE``): 0 "ot" ``exp(f_i + g_j - U_ij / lam)`` from the final Sinkhorn
potentials, ``log2 W_ij = (F_i - hs_i) + (G_j - hs_j) + <y_i, y_j>``: one matrix product over
the same augmented points as the Sinkhorn kernel (3xTF32 on tensor cores), so W is evaluated on
exactly the kernel the potentials were fitted to; 1 "uniform" 1; 2 "random" the counter hash of
``radi_fast._random`` (seed, row, answer ids) in uint32; 3 "uncertainty" ``1 / (U_ij + 1e-6)``
with U from the direct difference ``||y_i - y_j||^2`` over T (no cancellation for close answers,
where 1 / U is steepest). Nothing of size K x K is ever stored.

Outputs, all deterministic: per-(sample, row block) partial sums of the hinge (summed by the
caller) and integer gradient counts ``cnt[b, i]`` (``#{j: j > i active} - #{j: i > j active}``)
accumulated with int32 atomics, which are exact and order independent. ``|R_p|`` needs no
pairwise pass: with the answers sorted by the teacher it is ``sum_i #{j: t_j < t_i}``, one
``searchsorted`` in the caller.
"""
import triton
import triton.language as tl

from .common import LN2, augmented_dot, lowbias32, split_tf32

UNCERTAINTY_EPS = tl.constexpr(1e-6)
UNIFORM_SCALE = tl.constexpr(1.0 / (1 << 24))


@triton.jit
def margin_ranking_kernel(
    y_ptr,  # [B, TP, K] scaled centred points (lanes t >= T are 0)
    hs_ptr,  # [B, K] ||y||^2 / 2 (MODE 0)
    f_ptr, g_ptr,  # [B, K] Sinkhorn potentials, base 2 (MODE 0)
    nvalid_ptr,  # [B] int64 K_b
    lam_ptr,  # [B] lam (MODE 3: U = ||y_i - y_j||^2 lam ln2 / 2)
    teacher_ptr,  # [B, K] teacher scores in teacher order
    student_ptr,  # [B, K] student scores, gathered in the same order
    ids_ptr,  # [B, K] int64 answer ids (MODE 2)
    rowhash_ptr,  # [B] int64 holding uint32 lowbias32(lowbias32(seed) ^ b) (MODE 2)
    loss_part_ptr,  # [B, NB] partial hinge sums
    cnt_ptr,  # [B, K] int32 gradient counts (zero-initialised)
    margin,
    K, NB,
    MODE: tl.constexpr, T: tl.constexpr, TP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    ib = tl.program_id(1)
    i0 = ib * BM
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    rows = i0 + tl.arange(0, BM)
    row_ok = rows < kb
    # the hinge sum stays per pair (reduced once at the end); the active counts per row are reduced
    # per tile (fewer registers than a per-pair integer accumulator: no spills in any mode)
    loss_acc = tl.zeros([BM, BN], COMPUTE)
    cnt_rows = tl.zeros([BM], tl.int32)
    if i0 < kb:
        y_b = y_ptr + b * TP * K
        kvec = b * K
        offs_t = tl.arange(0, TP)
        ti = tl.load(teacher_ptr + kvec + rows, mask=row_ok, other=0.0).to(COMPUTE)
        si = tl.load(student_ptr + kvec + rows, mask=row_ok, other=0.0).to(COMPUTE)
        if MODE == 0:  # rows [y_i, 1, F_i - hs_i] . columns [y_j, G_j - hs_j, 1] = log2 W_ij
            fi = tl.load(f_ptr + kvec + rows, mask=row_ok, other=0.0) - tl.load(hs_ptr + kvec + rows, mask=row_ok,
                                                                             other=0.0)
            yi = tl.load(y_b + offs_t[None, :] * K + rows[:, None], mask=(offs_t[None, :] < T) & row_ok[:, None],
                         other=0.0)
            yi = tl.where(offs_t[None, :] == T, 1.0, tl.where(offs_t[None, :] == T + 1, fi[:, None], yi))
            if COMPUTE == tl.float32:
                yi_b, yi_s = split_tf32(yi)  # loop-invariant half of the 3xTF32 split
            else:  # fp64: one exact dot, the split operands are unused
                yi_b = yi
                yi_s = yi
        if MODE == 2:
            hrow = tl.load(rowhash_ptr + b).to(tl.uint32)
            hi = lowbias32(hrow ^ tl.load(ids_ptr + kvec + rows, mask=row_ok, other=0).to(tl.uint32))
        if MODE == 3:
            u_scale = tl.load(lam_ptr + b).to(COMPUTE) * (0.5 * LN2)
        for j0 in range((i0 // BN) * BN, kb, BN):
            cols = j0 + tl.arange(0, BN)
            col_ok = cols < kb
            tj = tl.load(teacher_ptr + kvec + cols, mask=col_ok, other=0.0).to(COMPUTE)
            sj = tl.load(student_ptr + kvec + cols, mask=col_ok, other=0.0).to(COMPUTE)
            ordered = (ti[:, None] > tj[None, :]) & row_ok[:, None] & col_ok[None, :]
            if MODE == 0:
                gj = tl.load(g_ptr + kvec + cols, mask=col_ok, other=0.0) - tl.load(hs_ptr + kvec + cols,
                                                                                 mask=col_ok, other=0.0)
                yj = tl.load(y_b + offs_t[:, None] * K + cols[None, :],
                             mask=(offs_t[:, None] < T) & col_ok[None, :], other=0.0)
                yj = tl.where(offs_t[:, None] == T, gj[None, :], tl.where(offs_t[:, None] == T + 1, 1.0, yj))
                x = augmented_dot(yi, yi_b, yi_s, yj, COMPUTE)
                w = tl.exp2(x)
            elif MODE == 1:
                w = tl.full([BM, BN], 1.0, COMPUTE)
            elif MODE == 2:
                idj = tl.load(ids_ptr + kvec + cols, mask=col_ok, other=0).to(tl.uint32)
                h = lowbias32(hi[:, None] ^ idj[None, :])
                w = (h >> 8).to(COMPUTE) * UNIFORM_SCALE
            else:  # direct difference: no cancellation for close answers, where 1 / U is steepest
                d2 = tl.zeros([BM, BN], COMPUTE)
                for t in tl.static_range(T):
                    yi_t = tl.load(y_b + t * K + rows, mask=row_ok, other=0.0)
                    yj_t = tl.load(y_b + t * K + cols, mask=col_ok, other=0.0)
                    diff = yi_t[:, None] - yj_t[None, :]
                    d2 += diff * diff
                w = 1.0 / (d2 * u_scale + UNCERTAINTY_EPS)
            hinge = margin * w - (si[:, None] - sj[None, :])
            active = ordered & (hinge > 0.0)
            loss_acc += tl.where(active, hinge, 0.0)
            act = active.to(tl.int32)
            cnt_rows += tl.sum(act, axis=1)
            tl.atomic_add(cnt_ptr + kvec + cols, tl.sum(act, axis=0), mask=col_ok)
        tl.atomic_add(cnt_ptr + kvec + rows, -cnt_rows, mask=row_ok)
    tl.store(loss_part_ptr + b * NB + ib, tl.sum(tl.sum(loss_acc, axis=1), axis=0))


@triton.jit
def pair_uniform_kernel(rowhash_ptr, ids_i_ptr, ids_j_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Test helper: the "random" mode's weight of pairs (row, ids_i[k], ids_j[k]) in fp32."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    hr = tl.load(rowhash_ptr + offs, mask=ok, other=0).to(tl.uint32)
    hi = lowbias32(hr ^ tl.load(ids_i_ptr + offs, mask=ok, other=0).to(tl.uint32))
    h = lowbias32(hi ^ tl.load(ids_j_ptr + offs, mask=ok, other=0).to(tl.uint32))
    tl.store(out_ptr + offs, (h >> 8).to(tl.float32) * UNIFORM_SCALE, mask=ok)
