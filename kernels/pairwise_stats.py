"""Centring of the teacher's MC logits, per-answer statistics and the "auto" lam, in O(B K T).

One program per sample (the work is O(K T) per sample, microseconds at K = 2500): it gathers the
sample's top-k answers straight from the ``[B, T, N]`` MC logits through ``order`` (no gathered
copy), centres each answer's T-vector ``z_i = P[:, i] - mean_t P[:, i]``, and

* pass 1 accumulates ``sum_i ||z_i||^2`` and ``sum_i z_i`` for the "auto" lam
  (mean off-diagonal U, ``(2 K sum_i s_i - 2 ||sum_i z_i||^2) / (T K (K - 1))``, as in
  ``radi_fast.pairwise.auto_lam_from_points``), or reads the given lam;
* pass 2 recomputes ``z`` and writes the scaled points ``y_i = sqrt(2 c) z_i`` with
  ``c = log2(e) / (T lam)``, transposed to ``[B, TP, K]`` (coalesced along K), and
  ``hs_i = ||y_i||^2 / 2 = c ||z_i||^2``.

With these, ``U_ij / lam * log2(e) = hs_i + hs_j - <y_i, y_j> = ||y_i - y_j||^2 / 2``: the
Sinkhorn and loss kernels work in base 2 on ``y`` and never need T, lam or ln 2 again.
Padding (k >= K_b) and the pad lanes t >= T are written as 0.
"""
import triton
import triton.language as tl

from .common import LOG2E


@triton.jit
def pairwise_stats_kernel(
    mc_ptr, stride_mb, stride_mt, stride_mn,  # [B, T, N] teacher MC logits, any float dtype
    order_ptr, stride_ob,  # [B, K] int64 answer ids in teacher order
    nvalid_ptr,  # [B] int64 K_b
    lam_ptr,  # [B] compute dtype: read (AUTO=False) or written (AUTO=True)
    y_ptr,  # out [B, TP, K]: sqrt(2 c) z
    hs_ptr,  # out [B, K]: ||y||^2 / 2
    K, T,
    TP: tl.constexpr, BK: tl.constexpr, AUTO: tl.constexpr, COMPUTE: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    offs_t = tl.arange(0, TP)
    t_ok = offs_t < T
    mc_base = mc_ptr + b * stride_mb + offs_t.to(tl.int64)[:, None] * stride_mt
    inv_t = 1.0 / T.to(COMPUTE)

    if AUTO:
        sum_s = tl.zeros([BK], dtype=COMPUTE)
        sum_z = tl.zeros([TP], dtype=COMPUTE)
        for k0 in range(0, kb, BK):
            offs_k = k0 + tl.arange(0, BK)
            k_ok = offs_k < kb
            ids = tl.load(order_ptr + b * stride_ob + offs_k, mask=k_ok, other=0)
            mask = t_ok[:, None] & k_ok[None, :]
            x = tl.load(mc_base + ids[None, :] * stride_mn, mask=mask, other=0.0).to(COMPUTE)  # [TP, BK]
            mean = tl.sum(x, axis=0) * inv_t
            z = tl.where(mask, x - mean[None, :], 0.0)
            sum_s += tl.sum(z * z, axis=0)
            sum_z += tl.sum(z, axis=1)
        k = kb.to(COMPUTE)
        total = (2.0 * k * tl.sum(sum_s, axis=0) - 2.0 * tl.sum(sum_z * sum_z, axis=0)) * inv_t
        mean_off = total / tl.maximum(k * (k - 1.0), 1.0)
        lam = tl.where((kb >= 2) & (mean_off > 0.0), mean_off, 1.0)
        tl.store(lam_ptr + b, lam)
    else:
        lam = tl.load(lam_ptr + b).to(COMPUTE)

    c = LOG2E * inv_t / lam
    scale = tl.sqrt(2.0 * c)
    y_base = y_ptr + b * TP * K + offs_t.to(tl.int64)[:, None] * K
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        k_ok = offs_k < kb
        ids = tl.load(order_ptr + b * stride_ob + offs_k, mask=k_ok, other=0)
        mask = t_ok[:, None] & k_ok[None, :]
        x = tl.load(mc_base + ids[None, :] * stride_mn, mask=mask, other=0.0).to(COMPUTE)
        mean = tl.sum(x, axis=0) * inv_t
        y = tl.where(mask, (x - mean[None, :]) * scale, 0.0)
        in_k = offs_k < K
        tl.store(y_base + offs_k[None, :], y, mask=in_k[None, :])
        tl.store(hs_ptr + b * K + offs_k, 0.5 * tl.sum(y * y, axis=0), mask=in_k)
