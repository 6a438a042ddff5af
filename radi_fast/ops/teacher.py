"""The teacher side shared by both RADI-P backends: compute dtype, top-k ranking, tie groups."""
from __future__ import annotations

from typing import Optional

import torch

from .._constants import NEGLIGIBLE_FACTOR
from .._validation import valid_mask


def compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """fp64 stays fp64; everything else accumulates in fp32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def teacher_top_k(teacher_logits: torch.Tensor, top_k: int, valid: Optional[torch.Tensor], *,
                  pad_to_top_k: bool = False, with_valid: bool = True):
    """Each row's top ``top_k`` valid answers in teacher order: ``(ids [B, K], valid [B, K], K_b [B])``.

    ``valid``: None (every answer), [B] ``lengths`` (columns ``>= lengths[b]`` are padding) or a
    [B, N] bool mask (False = padding, any positions). Stable descending sort (ties by lower
    index), padding last (it may hold anything, NaN included: it is never compared).
    ``K = max_b K_b``, which needs a host read; ``pad_to_top_k``: ``K = min(top_k, N)``
    instead (no host sync; the extra columns are padding), the same ids on every valid position.
    ``with_valid=False``: None in place of the [B, K] mask (the valid answers are each row's
    first ``K_b``).
    """
    B, N = teacher_logits.shape
    keys = teacher_logits.float() if teacher_logits.dtype in (torch.float16, torch.bfloat16) else teacher_logits
    mask = valid_mask(valid, B, N, keys.device)
    if mask is None:
        k_b = torch.full((B,), min(top_k, N), dtype=torch.int64, device=keys.device)
    else:
        keys = keys.masked_fill(~mask, float("-inf"))
        k_b = mask.sum(dim=1).clamp(max=top_k)
    if pad_to_top_k:
        K = min(top_k, N)
    else:
        K = min(top_k, N) if mask is None else (min(top_k, int(k_b.max())) if B else 0)
    order = torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :K]
    if not with_valid:
        return order, None, k_b
    valid = torch.arange(K, device=keys.device)[None, :] < k_b[:, None]
    return order, valid, k_b


def tie_groups(teacher_sorted: torch.Tensor, valid: torch.Tensor, n_valid: torch.Tensor):
    """``(tie_lo, tie_hi, n_pairs)`` of scores sorted in descending order: answer i's tie group is
    ``[tie_lo_i, tie_hi_i)``, so ``t_i > t_j`` iff ``j >= tie_hi_i``; ``n_pairs = |R_p| =
    sum_i (K_b - tie_hi_i)`` over valid i ([B] int64)."""
    ascending = torch.where(valid, -teacher_sorted, torch.full_like(teacher_sorted, float("inf"))).contiguous()
    tie_lo = torch.searchsorted(ascending, ascending, side="left")
    tie_hi = torch.searchsorted(ascending, ascending, side="right")
    n_pairs = ((n_valid.to(tie_hi.device)[:, None] - tie_hi).clamp(min=0) * valid).sum(dim=1)
    return tie_lo, tie_hi, n_pairs


def negligible_uncertainty(logit_scale, dtype: torch.dtype):
    """Variances below this are rounding noise of logits of magnitude ``logit_scale`` (the one
    threshold of both backends: kernels/pairwise_stats.py receives ``NEGLIGIBLE_FACTOR eps^2``)."""
    return NEGLIGIBLE_FACTOR * (torch.finfo(dtype).eps * logit_scale) ** 2


def negligible_noise(dtype: torch.dtype) -> float:
    """``NEGLIGIBLE_FACTOR eps^2``: the threshold per squared logit scale (the Triton kernel's argument)."""
    return NEGLIGIBLE_FACTOR * torch.finfo(dtype).eps ** 2


# ----------------------------------------------------------------------------- scale (docs/numerics.md)
# The largest cost U/lam that Sinkhorn is given, per compute dtype: the log-domain terms have
# rounding errors of about eps times the largest cost, so past this bound W would drift from
# doubly stochastic. A smaller lam is solved at this bound: every cost gap the dtype resolves
# then weighs at least exp(-MAX_COST * eps) apart, so W is already the hard assignment there.
MAX_COST = {torch.float32: 2.0 ** 14, torch.float64: 2.0 ** 32}


def unit_scale(logit_scale: torch.Tensor) -> torch.Tensor:
    """Per sample the power of two ``2^-e`` that brings the largest |logit| into [0.5, 1) (1 for
    0 or non-finite): multiplying by it is exact, so the scaled problem has the same bits, but
    squares and sums of squares can no longer overflow (logits near 1e19 in fp32). At most
    2^1023 (fp64 logits below 2^-1023, subnormal, stay below 0.5: 2^-e would be inf)."""
    ok = torch.isfinite(logit_scale) & (logit_scale > 0)
    _, e = torch.frexp(torch.where(ok, logit_scale, torch.ones_like(logit_scale)).double())
    return torch.where(ok, torch.pow(2.0, (-e).clamp(max=1023).double()), torch.ones_like(logit_scale, dtype=torch.float64))


def kernel_lam(lam: torch.Tensor, factor: torch.Tensor, max_cost_bound: torch.Tensor, dtype: torch.dtype):
    """lam in the scaled units (``lam factor^2``, computed in float64) that the solver uses, [B]:
    at least ``max_cost_bound / MAX_COST`` (``max_cost_bound >= max_ij U_ij`` in scaled units) and
    at most the dtype's largest number, so ``U / lam`` and ``1 / lam`` stay finite at any lam."""
    scaled = lam.double() * factor * factor
    floor = max_cost_bound.double() / MAX_COST[dtype]
    big = torch.finfo(dtype).max
    return torch.maximum(scaled, floor).clamp(min=torch.finfo(dtype).tiny, max=big).to(dtype)


def real_units(factor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``1 / factor^2`` in ``dtype``, saturated at its largest number (U = scaled U x this)."""
    return (1.0 / (factor * factor)).clamp(max=torch.finfo(dtype).max).to(dtype)
