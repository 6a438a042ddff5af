"""RADI-L's list losses on gathered sub-lists (eqs. 6-9): ListMLE, ListNet, STListNet and the
LambdaLoss family with allRank's lambda weights. Conventions: docs/listwise.md."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def _order_desc(values: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Permutation of each row sorting ``values`` descending, ties by lower answer id."""
    by_id = answer_ids.argsort(dim=1)  # ids are distinct within a row: no ties here
    by_value = torch.sort(values.gather(1, by_id), dim=1, descending=True, stable=True).indices
    return by_id.gather(1, by_value)


def _linear_scan(a: torch.Tensor) -> torch.Tensor:
    """``E_k = 1 + a_k E_{k-1}`` along dim 1 (``E_{-1} = 0``) for ``a`` in [0, 1]: a log-depth
    (Hillis-Steele) scan of the affine maps ``E -> a E + b``. Every quantity is a product or a
    sum of non-negative numbers in ``[0, n]``: no overflow, no cancellation."""
    A, Bv = a, torch.ones_like(a)
    n, shift = a.shape[1], 1
    while shift < n:  # element k holds the map of positions (k - shift, k]; compose with the one before
        Bv = torch.cat([Bv[:, :shift], Bv[:, shift:] + A[:, shift:] * Bv[:, :-shift]], dim=1)
        A = torch.cat([A[:, :shift], A[:, shift:] * A[:, :-shift]], dim=1)
        shift *= 2
    return Bv


@torch.no_grad()
def _listmle_gradient(s_sorted: torch.Tensor, suffix_lse: torch.Tensor, in_list: torch.Tensor) -> torch.Tensor:
    """``d/ds_k sum_i logsumexp_{j >= i} s_j = sum_{i <= k} exp(s_k - L_i)`` (L the suffix
    log-sum-exps), computed as ``exp(s_k - L_k) E_k`` with ``E_k = sum_{i <= k} exp(L_k - L_i) =
    1 + exp(L_k - L_{k-1}) E_{k-1}``. Only differences of neighbouring L's and ``s_k - L_k`` are
    exponentiated, so the gradient stays exact at any gap between the scores (autograd through
    ``torch.logcumsumexp`` loses it: d/ds_1 of ListMLE on [0, 1e10] came out 0 instead of 1)."""
    step = torch.exp(suffix_lse[:, 1:] - suffix_lse[:, :-1])  # in [0, 1]: L is non-increasing
    E = _linear_scan(torch.cat([step.new_zeros(step.shape[0], 1), step], dim=1))
    return torch.where(in_list, torch.exp(s_sorted - suffix_lse) * E, torch.zeros_like(E))


def _listmle(s, t, answer_ids, valid):
    """Eq. 6: ``sum_i [logsumexp_{k >= i} s_{R_k} - s_{R_i}]`` over the teacher order R.

    The value is the cumulative log-sum-exp's; the gradient is :func:`_listmle_gradient`'s,
    attached as ``P * (s - s.detach())`` (exactly 0 in value)."""
    order = _order_desc(t if valid is None else t.masked_fill(~valid, float("-inf")), answer_ids)
    s_sorted = s.gather(1, order)
    n = s.shape[1]
    positions = torch.arange(n, device=s.device)
    n_valid = torch.full((s.shape[0], 1), n, device=s.device) if valid is None else valid.sum(1, keepdim=True)
    # Reverse each row's valid prefix (padding sorts last and stays in place): a cumulative
    # logsumexp then gives every suffix sum over valid items only, without -inf (whose
    # logcumsumexp gradient is NaN) and without touching padding.
    reverse = torch.where(positions[None, :] < n_valid, n_valid - 1 - positions[None, :], positions[None, :])
    suffix_lse = torch.logcumsumexp(s_sorted.detach().gather(1, reverse), dim=1).gather(1, reverse)
    in_list = positions[None, :] < n_valid
    terms = suffix_lse - s_sorted
    if valid is not None:
        terms = torch.where(in_list, terms, torch.zeros_like(terms))
    P = _listmle_gradient(s_sorted.detach(), suffix_lse, in_list)
    return terms.sum(1) + (P * (s_sorted - s_sorted.detach())).sum(1)


def _listnet(s, target_logits, valid):
    """Eqs. 7/8: ``-sum_i softmax(target)_i * log_softmax(s)_i``."""
    if valid is not None:
        # a row without a valid item (every answer masked) keeps its zeroed padding: finite
        # softmaxes, then log_p = 0 below, so its loss is 0 (not the NaN of an all -inf softmax)
        hidden = ~valid & valid.any(dim=1, keepdim=True)
        target_logits = target_logits.masked_fill(hidden, float("-inf"))
        s = s.masked_fill(hidden, float("-inf"))
    target = torch.softmax(target_logits, dim=1)
    log_p = torch.log_softmax(s, dim=1)
    if valid is not None:
        log_p = torch.where(valid, log_p, torch.zeros_like(log_p))  # 0 * -inf would be NaN
    return -(target * log_p).sum(1)


def _ndcg_delta_table(n: int, dtype, device) -> torch.Tensor:
    """``delta[k] = |1/D(k) - 1/D(k + 1)|``, ``D(k) = log2(1 + k)``, k = 0..n-1; ``delta[0] = 0``
    (self-pairs; 1/D(0) is infinite)."""
    k = torch.arange(n, dtype=dtype, device=device)
    delta = (1.0 / torch.log2(1.0 + k) - 1.0 / torch.log2(2.0 + k)).abs()
    delta[0] = 0.0
    return delta


@torch.no_grad()
def _lambda_weights(loss, s, t_masked, answer_ids, valid, mu):
    """``w_ij`` of eq. 9 for the NDCG schemes, ``[B, n, n]`` (constants: no gradient)."""
    B, n = s.shape
    rel = torch.softmax(t_masked, dim=1)  # graded relevance; 0 on padding
    gain = torch.expm1(rel * LN2)  # 2^rel - 1
    discounts = torch.log2(2.0 + torch.arange(n, dtype=s.dtype, device=s.device))  # log2(1 + p), p = 1..n
    max_dcg = (torch.sort(gain, dim=1, descending=True).values / discounts).sum(1, keepdim=True)
    G = gain / max_dcg
    s_for_rank = s if valid is None else s.masked_fill(~valid, float("-inf"))
    student_order = _order_desc(s_for_rank, answer_ids)
    positions = torch.empty_like(student_order).scatter_(
        1, student_order, torch.arange(1, n + 1, device=s.device).expand(B, n).contiguous())
    D = torch.log2(1.0 + positions.to(s.dtype))
    if loss == "ndcg_loss1":
        return (G / D)[:, :, None].expand(B, n, n)
    gain_gaps = (G[:, :, None] - G[:, None, :]).abs()
    if loss in ("ndcg_loss2", "ndcg_loss2pp"):
        position_gaps = (positions[:, :, None] - positions[:, None, :]).abs()
        weights = _ndcg_delta_table(n, s.dtype, s.device)[position_gaps] * gain_gaps
        if loss == "ndcg_loss2":
            return weights
        inv_D = 1.0 / D
        return mu * weights + (inv_D[:, :, None] - inv_D[:, None, :]).abs() * gain_gaps
    raise AssertionError(loss)  # pragma: no cover


def lambda_loss(loss, s, t, answer_ids, valid, sigma, mu):
    """Eq. 9: ``-sum_{(i, j): t_i > t_j} w_ij log2 sigmoid(sigma (s_i - s_j))``."""
    t_masked = t if valid is None else t.masked_fill(~valid, float("-inf"))
    ordered_pairs = t_masked[:, :, None] > t_masked[:, None, :]  # R_p; padding loses every comparison
    if valid is not None:
        ordered_pairs &= valid[:, None, :]  # ... and wins none
    # w_ij with the pair mask folded in (a constant: masking costs no extra [B, n, n] autograd op)
    pair_weights = ordered_pairs.to(s.dtype)
    if loss != "ranknet":
        pair_weights *= _lambda_weights(loss, s.detach(), t_masked, answer_ids, valid, mu)
    log_sigmoid = F.logsigmoid(sigma * (s[:, :, None] - s[:, None, :]))  # finite: s is finite
    return -(pair_weights * log_sigmoid).sum((1, 2)) / LN2  # log2 = ln / ln 2


def listwise_loss_on_sublist(student_sub: torch.Tensor, teacher_sub: torch.Tensor, answer_ids: torch.Tensor,
                             loss: str = "listnet", valid: Optional[torch.Tensor] = None, *,
                             beta: float = 1.0, uniforms: Optional[torch.Tensor] = None, sigma: float = 1.0,
                             mu: float = 10.0) -> torch.Tensor:
    """Per-row loss ``[B]`` on already-gathered sub-lists (the core of :func:`radi_listwise_loss`).

    ``student_sub``/``teacher_sub``: ``[B, n]`` scores (finite on valid entries) in the compute
    dtype; ``answer_ids``: ``[B, n]`` distinct answer indices (for the tie rule); ``valid``:
    optional ``[B, n]`` bool; ``uniforms``: ``[B, n]`` in ``(0, 1)`` (``"stlistnet"`` only).
    """
    if student_sub.shape[1] == 0:  # hot = cold = 0: an empty sub-list costs nothing
        return student_sub.sum(1)
    if valid is not None:
        # padding may hold anything; make it finite so no NaN reaches a gradient
        student_sub = torch.where(valid, student_sub, torch.zeros_like(student_sub))
        teacher_sub = torch.where(valid, teacher_sub, torch.zeros_like(teacher_sub))
    if loss == "listmle":
        return _listmle(student_sub, teacher_sub, answer_ids, valid)
    if loss == "listnet":
        return _listnet(student_sub, teacher_sub, valid)
    if loss == "stlistnet":
        # in float64: u rounds to 1 in fp32 near 1, which would make the noise infinite
        noise = -beta * torch.log(-torch.log(uniforms.to(torch.float64)))
        return _listnet(student_sub, teacher_sub + noise.to(teacher_sub.dtype), valid)
    return lambda_loss(loss, student_sub, teacher_sub, answer_ids, valid, sigma, mu)
