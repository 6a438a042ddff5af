"""Teacher statistics in O(B K T) (docs/triton.md, "Notation").

``pairwise_lam_kernel``: the "auto" lam, the mean off-diagonal U of each sample, or 1 when that
is rounding noise (the CPU path's threshold, ``noise * max|logit|^2``). ``pairwise_points_kernel``: ``y = sqrt(2 c) z``
with ``c = log2(e) / (T lam)`` and ``hs = ||y||^2 / 2``, written as the augmented points
``Z = [y, p, q, 1, 0...]`` with ``p = q = -hs`` (fp32: split ``Zb + Zs`` for 3xTF32); answers
past ``K_b`` get ``y = 0`` and ``p = q = PAD_LOGIT``.
"""
import triton
import triton.language as tl

from .common import LOG2E, PAD_LOGIT, split_tf32


@triton.jit
def _centred(mc_ptr, stride_mb, stride_mt, stride_mn, order_ptr, stride_ob, b, k0, kb, T,
             TP: tl.constexpr, BK: tl.constexpr, COMPUTE: tl.constexpr):
    """The centred MC logits of answers ``k0 .. k0 + BK`` of sample b: [TP, BK] (0 outside)."""
    offs_t = tl.arange(0, TP)
    offs_k = k0 + tl.arange(0, BK)
    k_ok = offs_k < kb
    ids = tl.load(order_ptr + b * stride_ob + offs_k, mask=k_ok, other=0)
    mask = (offs_t[:, None] < T) & k_ok[None, :]
    x = tl.load(mc_ptr + b * stride_mb + offs_t.to(tl.int64)[:, None] * stride_mt + ids[None, :] * stride_mn,
                mask=mask, other=0.0).to(COMPUTE)
    mean = tl.sum(x, axis=0) / T.to(COMPUTE)
    return tl.where(mask, x - mean[None, :], 0.0), tl.max(tl.max(tl.abs(x), axis=1), axis=0)


@triton.jit
def pairwise_lam_kernel(
    mc_ptr, stride_mb, stride_mt, stride_mn,  # [B, T, N] teacher MC logits, any float dtype
    order_ptr, stride_ob,  # [B, K] int64 answer ids in teacher order
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
        z, amax = _centred(mc_ptr, stride_mb, stride_mt, stride_mn, order_ptr, stride_ob, b, k0, kb, T, TP, BK,
                           COMPUTE)
        sum_s += tl.sum(z * z, axis=0)
        sum_z += tl.sum(z, axis=1)
        scale = tl.maximum(scale, amax)
    k = kb.to(COMPUTE)
    total = (2.0 * k * tl.sum(sum_s, axis=0) - 2.0 * tl.sum(sum_z * sum_z, axis=0)) / T.to(COMPUTE)
    mean_off = total / tl.maximum(k * (k - 1.0), 1.0)
    negligible = noise * scale * scale  # ops/teacher.py negligible_uncertainty: one threshold for both paths
    tl.store(lam_ptr + b, tl.where((kb >= 2) & (mean_off > negligible), mean_off, 1.0))


@triton.jit
def pairwise_points_kernel(
    mc_ptr, stride_mb, stride_mt, stride_mn,  # [B, T, N] teacher MC logits, any float dtype
    order_ptr, stride_ob,  # [B, K] int64 answer ids in teacher order
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
    z, _ = _centred(mc_ptr, stride_mb, stride_mt, stride_mn, order_ptr, stride_ob, b, k0, kb, T, TP, BK, COMPUTE)
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
