"""Teacher statistics in O(B K T) (docs/triton.md, "Notation").

``teacher_prepare_kernel``: one program per sample does everything the solver needs before its
first product: the teacher's tie groups, gathers the MC logits of the top-k answers in teacher order, scales them by the power of
two that brings the largest |logit| into [0.5, 1) (exact), and computes lam: the "auto" lam (the
mean off-diagonal U, or 1 when that is rounding noise) or the fixed one, in the caller's units and
in the scaled, floored and capped units the kernels use (ops/teacher.py ``kernel_lam``; the floor
needs the largest U, bounded by ``4 max_i ||z_i||^2 / T``), and the points below at that lam.
``pairwise_lam_kernel``: the mean off-diagonal U alone, and ``pairwise_points_kernel``: the points
at another lam (both for epsilon scaling's levels). Points: ``y = sqrt(2 c) z``
with ``c = log2(e) / (T lam)`` and ``hs = ||y||^2 / 2``, written as the augmented points
``Z = [y, p, q, 1, 0...]`` with ``p = q = -hs`` (fp32: split ``Zb + Zs`` for 3xTF32); answers
past ``K_b`` get ``y = 0`` and ``p = q = PAD_LOGIT``. The last two kernels read the scaled
logits that the first wrote ([B, T, K], contiguous).
"""
import triton
import triton.language as tl

from .common import LOG2E, PAD_LOGIT, split_tf32


@triton.jit
def _logits(mc_ptr, stride_mb, stride_mt, stride_mn, order_ptr, stride_ob, b, k0, kb, T,
            TP: tl.constexpr, BK: tl.constexpr, COMPUTE: tl.constexpr, GATHER: tl.constexpr):
    """MC logits of answers ``k0 .. k0 + BK`` of sample b as a [TP, BK] tile (0 outside), and its
    mask; ``GATHER``: answer k is column ``order[b, k]`` of mc, else column k."""
    offs_t = tl.arange(0, TP)
    offs_k = k0 + tl.arange(0, BK)
    k_ok = offs_k < kb
    if GATHER:
        ids = tl.load(order_ptr + b * stride_ob + offs_k, mask=k_ok, other=0)
    else:
        ids = offs_k.to(tl.int64)
    mask = (offs_t[:, None] < T) & k_ok[None, :]
    x = tl.load(mc_ptr + b * stride_mb + offs_t.to(tl.int64)[:, None] * stride_mt + ids[None, :] * stride_mn,
                mask=mask, other=0.0).to(COMPUTE)
    return x, mask


@triton.jit
def _centre(x, mask, T):
    """Each answer's logits minus their mean over the T passes (0 outside ``mask``)."""
    mean = tl.sum(x, axis=0) / T.to(x.dtype)
    return tl.where(mask, x - mean[None, :], 0.0)


@triton.jit
def _mean_off_diagonal(sum_s, sum_z, kb, T, noise, scale, COMPUTE: tl.constexpr):
    """The auto lam from the accumulated per-answer sums of squares ``sum_s`` [BK] and per-pass
    sums ``sum_z`` [TP] of the centred logits: the mean off-diagonal U, or 1 when that is below
    the rounding noise of logits of magnitude ``scale`` (ops/teacher.py negligible_uncertainty: one
    threshold for both paths) or the sample has fewer than two answers."""
    k = kb.to(COMPUTE)
    total = (2.0 * k * tl.sum(sum_s, axis=0) - 2.0 * tl.sum(sum_z * sum_z, axis=0)) / T.to(COMPUTE)
    mean_off = total / tl.maximum(k * (k - 1.0), 1.0)
    negligible = noise * scale * scale
    return tl.where((kb >= 2) & (mean_off > negligible), mean_off, 1.0)


@triton.jit
def _power_of_two(e):
    """``2^e`` in fp64 for an int64 ``e`` in [-1074, 1023], as two exact factors built from
    exponent bits (one alone would leave the normal range below 2^-1022)."""
    h1 = e // 2
    h2 = e - h1
    f1 = ((h1 + 1023) << 52).to(tl.float64, bitcast=True)
    f2 = ((h2 + 1023) << 52).to(tl.float64, bitcast=True)
    return f1 * f2


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_combine(a, b):
    return tl.minimum(a, b)


@triton.jit
def _teacher_at(teacher_ptr, stride_tb, stride_tn, order_ptr, stride_ob, b, offs_k, ok):
    ids = tl.load(order_ptr + b * stride_ob + offs_k, mask=ok, other=0)
    return tl.load(teacher_ptr + b * stride_tb + ids * stride_tn, mask=ok, other=0.0)


@triton.jit
def _tie_starts(teacher_ptr, stride_tb, stride_tn, order_ptr, stride_ob, lo_ptr, b, offs_k, kb, carry, KP):
    """Forward step of the tie groups (:func:`teacher_prepare_kernel`): each answer's ``lo`` as a
    running max of group starts, carried across blocks; returns the carry."""
    t = _teacher_at(teacher_ptr, stride_tb, stride_tn, order_ptr, stride_ob, b, offs_k, offs_k < kb)
    t_prev = _teacher_at(teacher_ptr, stride_tb, stride_tn, order_ptr, stride_ob, b, offs_k - 1,
                         (offs_k >= 1) & (offs_k < kb))
    start = tl.where((offs_k == 0) | (t != t_prev), offs_k, 0)
    lo = tl.maximum(tl.associative_scan(start, 0, _max_combine), carry)
    tl.store(lo_ptr + b * KP + offs_k, tl.where(offs_k < kb, lo, kb))
    return tl.max(lo, axis=0)


@triton.jit
def _tie_ends(teacher_ptr, stride_tb, stride_tn, order_ptr, stride_ob, hi_ptr, b, offs_k, kb, carry, KP):
    """Backward step (blocks from the last): each answer's ``hi`` as a running min of group ends;
    returns the carry and the block's share of ``|R_p| = sum_i (K_b - hi_i)``."""
    ok = offs_k < kb
    t = _teacher_at(teacher_ptr, stride_tb, stride_tn, order_ptr, stride_ob, b, offs_k, ok)
    t_next = _teacher_at(teacher_ptr, stride_tb, stride_tn, order_ptr, stride_ob, b, offs_k + 1, offs_k + 1 < kb)
    end = tl.where((offs_k + 1 >= kb) | (t != t_next), offs_k + 1, kb)
    hi = tl.minimum(tl.associative_scan(end, 0, _min_combine, reverse=True), carry)
    tl.store(hi_ptr + b * KP + offs_k, tl.where(ok, hi, kb))
    return tl.min(hi, axis=0), tl.sum(tl.where(ok, kb - hi, 0).to(tl.int64), axis=0)


@triton.jit
def teacher_prepare_kernel(
    mc_ptr, stride_mb, stride_mt, stride_mn,  # [B, T, N] teacher MC logits, any float dtype
    order_ptr, stride_ob,  # [B, K] int64 answer ids in teacher order
    nvalid_ptr,  # [B] int64 K_b
    out_ptr,  # out [B, T, K] compute dtype: the gathered logits x the sample's power of two, 0 past K_b
    unit_ptr,  # out [B] compute dtype: 1 / factor^2, saturated (U = scaled U x unit)
    lam_ptr,  # out [B] compute dtype: lam in the caller's units, saturated
    lamk_ptr,  # out [B] compute dtype: lam in the scaled units, floored and capped (kernel_lam)
    fixed_lam_ptr,  # [1] fp64: the caller's lam (FIXED_LAM only)
    teacher_ptr, stride_tb, stride_tn,  # [B, N] teacher scores in the compute dtype (the sort's keys)
    tie_lo_ptr, tie_hi_ptr,  # out [B, KP] int32 teacher tie groups: [lo_i, hi_i), K_b past K_b
    npairs_ptr,  # out [B] int64 |R_p|
    zb_ptr, zs_ptr, yt_ptr, hs_ptr,  # out: the points at lam_k (pairwise_points_kernel's outputs)
    student_ptr, stride_sb, stride_sn,  # [B, N] student scores, any float dtype (STUDENT only)
    sorted_ptr,  # out [B, KP] compute dtype: the student's scores in teacher order, -inf past K_b (STUDENT)
    noise,  # NEGLIGIBLE_FACTOR eps^2 of the compute dtype (ops/teacher.py negligible_noise)
    K, KP, T,
    TP: tl.constexpr, BK: tl.constexpr, COMPUTE: tl.constexpr, FIXED_LAM: tl.constexpr,
    SPLIT: tl.constexpr, LANE_MAJOR: tl.constexpr, STUDENT: tl.constexpr,
    INV_MAX_COST: tl.constexpr,  # 1 / MAX_COST of the compute dtype (ops/teacher.py; a power of two)
    BIG: tl.constexpr, TINY: tl.constexpr,  # the compute dtype's largest and smallest normal numbers
):
    b = tl.program_id(0).to(tl.int64)
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    # Three loops over the sample's answers (each iteration waits on its gathers, so few, wide
    # blocks): tie starts and the largest |logit|; the scaled logits and their sums; tie ends
    # (from the back) and the points. The teacher's tie groups (ops/teacher.py tie_groups):
    # answer i's group is [lo_i, hi_i) in teacher order, K_b past K_b.
    # loop 1: tie starts; the largest |logit| (and whether a valid one is NaN: max() skips it)
    carry = tl.zeros([], tl.int32)
    amax = tl.zeros([], dtype=COMPUTE)
    bad = tl.zeros([], dtype=tl.int32)
    for k0 in range(0, KP, BK):
        offs_k = k0 + tl.arange(0, BK)
        carry = _tie_starts(teacher_ptr, stride_tb, stride_tn, order_ptr, stride_ob, tie_lo_ptr, b, offs_k, kb, carry,
                            KP)
        x, _ = _logits(mc_ptr, stride_mb, stride_mt, stride_mn, order_ptr, stride_ob, b, k0, kb, T, TP, BK, COMPUTE,
                       True)
        amax = tl.maximum(amax, tl.max(tl.max(tl.abs(x), axis=1), axis=0))
        bad = tl.maximum(bad, tl.max(tl.max((x != x).to(tl.int32), axis=1), axis=0))
    # ops/teacher.py unit_scale: 2^-e with amax = m 2^e, m in [0.5, 1) (frexp), from the exponent bits
    # (constants through tl.full: a Python float in a kernel is an fp32 constant)
    a = amax.to(tl.float64)
    ok = (bad == 0) & (a > 0) & (a - a == 0)  # a - a is NaN for inf
    subnormal = a < tl.full((), 2.2250738585072014e-308, tl.float64)
    bits = tl.where(subnormal, a * tl.full((), 2.0 ** 64, tl.float64), a).to(tl.int64, bitcast=True)  # normal
    e = ((bits >> 52) & 0x7FF) - 1022 - tl.where(subnormal, 64, 0)
    # 1 for an all-zero or non-finite sample; at most 2^1023 (subnormal fp64 logits)
    factor = tl.where(ok, _power_of_two(tl.minimum(-e, 1023)), 1.0)
    scale = factor.to(COMPUTE)
    # loop 2: write the scaled logits; sums for the auto lam and the largest ||z_i||^2
    sum_s = tl.zeros([BK], dtype=COMPUTE)
    sum_z = tl.zeros([TP], dtype=COMPUTE)
    norm_max = tl.zeros([], dtype=COMPUTE)
    offs_t = tl.arange(0, TP)
    for k0 in range(0, K, BK):
        x, mask = _logits(mc_ptr, stride_mb, stride_mt, stride_mn, order_ptr, stride_ob, b, k0, kb, T, TP, BK,
                          COMPUTE, True)
        x = x * scale
        offs_k = k0 + tl.arange(0, BK)
        tl.store(out_ptr + b * T * K + offs_t[:, None] * K + offs_k[None, :], x,
                 mask=(offs_t[:, None] < T) & (offs_k[None, :] < K))
        z = _centre(x, mask, T)
        norms = tl.sum(z * z, axis=0)
        sum_s += norms
        sum_z += tl.sum(z, axis=1)
        norm_max = tl.maximum(norm_max, tl.max(norms, axis=0))
    big = tl.full((), BIG, tl.float64)
    unit = tl.minimum(1.0 / (factor * factor), big).to(COMPUTE)  # ops/teacher.py real_units
    if FIXED_LAM:
        lam = tl.load(fixed_lam_ptr).to(tl.float64)
        scaled = lam * factor * factor
    else:
        scaled = _mean_off_diagonal(sum_s, sum_z, kb, T, noise, amax * scale, COMPUTE).to(tl.float64)
        lam = scaled / factor / factor  # exact, or past fp64's range (saturated below); factor^2 may underflow
    tl.store(unit_ptr + b, unit)
    tl.store(lam_ptr + b, tl.minimum(lam, big).to(COMPUTE))
    floor = (4.0 * norm_max / T.to(COMPUTE)).to(tl.float64) * tl.full((), INV_MAX_COST, tl.float64)
    lam_k = tl.minimum(tl.maximum(tl.maximum(scaled, floor), tl.full((), TINY, tl.float64)), big).to(COMPUTE)
    tl.store(lamk_ptr + b, lam_k)
    # loop 3: tie ends, |R_p|; the augmented points at lam_k (the same bits as
    # pairwise_points_kernel's: x is recomputed exactly; no thread reads another's stores)
    carry = kb
    n_pairs = tl.zeros([], tl.int64)
    n_blocks = tl.cdiv(KP, BK)
    for i in range(0, n_blocks):
        k0 = (n_blocks - 1 - i) * BK
        offs_k = k0 + tl.arange(0, BK)
        carry, pairs = _tie_ends(teacher_ptr, stride_tb, stride_tn, order_ptr, stride_ob, tie_hi_ptr, b, offs_k, kb,
                                 carry, KP)
        n_pairs += pairs
        x, mask = _logits(mc_ptr, stride_mb, stride_mt, stride_mn, order_ptr, stride_ob, b, k0, kb, T, TP, BK,
                          COMPUTE, True)
        _write_points(x * scale, mask, lam_k, b, k0, kb, K, KP, T, zb_ptr, zs_ptr, yt_ptr, hs_ptr, TP, BK, SPLIT,
                      COMPUTE, LANE_MAJOR)
        if STUDENT:  # the loss kernel's rows (ops/pairwise_triton.py sorted_student, one launch fewer)
            answer = offs_k < kb
            ids = tl.load(order_ptr + b * stride_ob + offs_k, mask=answer, other=0)
            score = tl.load(student_ptr + b * stride_sb + ids * stride_sn, mask=answer, other=float("-inf"))
            tl.store(sorted_ptr + b * KP + offs_k, score.to(COMPUTE), mask=offs_k < KP)
    tl.store(npairs_ptr + b, n_pairs)


@triton.jit
def pairwise_lam_kernel(
    mc_ptr, stride_mb, stride_mt, stride_mn,  # [B, T, K] scaled teacher MC logits (teacher_prepare_kernel)
    nvalid_ptr,  # [B] int64 K_b
    lam_ptr,  # out [B] compute dtype
    noise,  # NEGLIGIBLE_FACTOR eps^2 of the compute dtype (ops/teacher.py negligible_noise)
    T,
    TP: tl.constexpr, BK: tl.constexpr, COMPUTE: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    sum_s = tl.zeros([BK], dtype=COMPUTE)
    sum_z = tl.zeros([TP], dtype=COMPUTE)
    scale = tl.zeros([], dtype=COMPUTE)
    for k0 in range(0, kb, BK):
        x, mask = _logits(mc_ptr, stride_mb, stride_mt, stride_mn, mc_ptr, 0, b, k0, kb, T, TP, BK, COMPUTE, False)
        z = _centre(x, mask, T)
        sum_s += tl.sum(z * z, axis=0)
        sum_z += tl.sum(z, axis=1)
        scale = tl.maximum(scale, tl.max(tl.max(tl.abs(x), axis=1), axis=0))
    tl.store(lam_ptr + b, _mean_off_diagonal(sum_s, sum_z, kb, T, noise, scale, COMPUTE))


@triton.jit
def _write_points(x, mask, lam, b, k0, kb, K, KP, T, zb_ptr, zs_ptr, yt_ptr, hs_ptr, TP: tl.constexpr,
                  BK: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr, LANE_MAJOR: tl.constexpr):
    """Z, hs (and the lane-major y) of answers ``k0 .. k0 + BK`` from their scaled logits ``x``."""
    z = _centre(x, mask, T)
    c = tl.full((), LOG2E, COMPUTE) / T.to(COMPUTE) / lam  # not a constexpr float: that is fp32
    y = z * tl.sqrt(2.0 * c)  # [TP, BK]
    hs = 0.5 * tl.sum(y * y, axis=0)
    offs_k = k0 + tl.arange(0, BK)
    k_ok = offs_k < kb
    lane = tl.arange(0, TP)[:, None]
    pot = tl.where(k_ok, -hs, PAD_LOGIT)[None, :]
    zt = tl.where(lane < T, y, tl.where((lane == T) | (lane == T + 1), pot, tl.where(lane == T + 2, 1.0, 0.0)))
    ptrs = b * KP * TP + offs_k[None, :] * TP + lane  # stored answer-major: [BK, TP] rows
    if SPLIT:
        big, small = split_tf32(zt)
        tl.store(zb_ptr + ptrs, big)
        tl.store(zs_ptr + ptrs, small)
    else:
        tl.store(zb_ptr + ptrs, zt)
    if LANE_MAJOR:
        tl.store(yt_ptr + b * TP * KP + lane * KP + offs_k[None, :], y)
    tl.store(hs_ptr + b * K + offs_k, hs, mask=offs_k < K)


@triton.jit
def pairwise_points_kernel(
    mc_ptr, stride_mb, stride_mt, stride_mn,  # [B, T, K] scaled teacher MC logits (teacher_prepare_kernel)
    nvalid_ptr,  # [B] int64 K_b
    lam_ptr,  # [B] compute dtype
    zb_ptr, zs_ptr,  # out [B, KP, TP] augmented points (zs only when SPLIT)
    yt_ptr,  # out [B, TP, KP] the points y, lane-major (only when LANE_MAJOR)
    hs_ptr,  # out [B, K] ||y||^2 / 2
    K, KP, T,
    TP: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr, LANE_MAJOR: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    k0 = tl.program_id(1) * BK
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    lam = tl.load(lam_ptr + b).to(COMPUTE)
    x, mask = _logits(mc_ptr, stride_mb, stride_mt, stride_mn, mc_ptr, 0, b, k0, kb, T, TP, BK, COMPUTE, False)
    _write_points(x, mask, lam, b, k0, kb, K, KP, T, zb_ptr, zs_ptr, yt_ptr, hs_ptr, TP, BK, SPLIT, COMPUTE, LANE_MAJOR)
