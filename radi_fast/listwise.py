"""RADI-L (sec. 3.3): partial listwise ranking distillation.

Per row, a sub-list of answers is chosen from the teacher's ranking (the hot list: the teacher's
top ``hot``; the cold list: ``cold`` answers sampled by rank from the rest, see
:mod:`radi_fast.sampling`), and a listwise loss makes the student's scores on that sub-list
mimic the teacher's ranking of it:

* ``"listmle"`` (eq. 6): Plackett-Luce negative log-likelihood of the teacher order.
* ``"listnet"`` (eq. 7): cross-entropy between the teacher's and the student's top-1 softmax.
* ``"stlistnet"`` (eq. 8): ListNet with Gumbel noise on the teacher scores.
* ``"ranknet"``, ``"ndcg_loss1"``, ``"ndcg_loss2"``, ``"ndcg_loss2pp"`` (eq. 9): the LambdaLoss
  family of Wang et al. (2018), with the lambda weights of allRank.

Conventions (see also ``docs/listwise.md``):

* **Target order.** Teacher scores on the sub-list sorted descending, ties broken by the lower
  answer index. The student's ranking (positions for the NDCG weights) uses the same tie rule.
* **ListMLE on ties.** It needs a strict order, so tied teacher scores are ordered by the tie rule;
  with an all-tied teacher it is the Plackett-Luce NLL of the index order (finite, > 0).
* **ListNet on ties.** The target is the softmax of the teacher scores: all tied gives the
  uniform target, i.e. ``logsumexp(s) - mean(s)`` (>= log n, 0 only when n = 1).
* **STListNet.** Noise ``eps_i = -beta * log(-log u_i)``, ``u_i ~ U(0, 1)`` from ``generator``,
  is added to the *teacher* scores as in the paper's eq. 8 (allRank's ``stochastic_listnet``
  perturbs the predictions instead). ``u`` is clamped to ``[tiny, 1)`` so ``eps`` is finite;
  ``beta = 0`` is ListNet.
* **LambdaLoss.** ``-sum_{(i, j) in R_p} w_ij * log2(sigmoid(sigma * (s_i - s_j)))`` over
  ``R_p = {(i, j): t_i > t_j}`` (strict) for *every* scheme, as eq. 9 writes it (allRank's
  ``ndcgLoss1_scheme`` sums over all pairs, self-pairs included). Relevance of an answer =
  softmax of the teacher scores over the sub-list (graded, in (0, 1], shift-invariant); gain
  ``G_i = (2^rel_i - 1) / maxDCG`` with ``maxDCG`` the ideal DCG over the whole sub-list (no
  truncation ``k``); discount ``D_i = log2(1 + pos_i)`` with ``pos_i`` the 1-based position of
  answer i in the *student's* ranking of the sub-list (a constant for autograd, as in allRank).
  Weights: ranknet ``1``; ndcg_loss1 ``G_i / D_i``; ndcg_loss2
  ``|1/D(|pos_i - pos_j|) - 1/D(|pos_i - pos_j| + 1)| * |G_i - G_j|`` with ``D(k) = log2(1 + k)``;
  ndcg_loss2pp ``mu * ndcg_loss2 + |1/D_i - 1/D_j| * |G_i - G_j|``. The log-sigmoid is computed
  exactly (no ``eps`` clamps). With no ordered pair (all teacher scores tied, n = 1) it is 0.
* **Reduction.** Per row: the sum over items / pairs (allRank's "sum"); then ``reduction`` over
  rows. Computed in float64 when an input is float64, else float32; returned in the student's
  dtype. The teacher is a constant (detached).
* **Randomness.** ``generator`` (global RNG when None) is consumed first by the sampler (only
  when ``sampling != "full"`` and ``cold > 0``), then by STListNet's ``[B, n]`` float64
  uniforms (:func:`stlistnet_uniforms`).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import (
    check_choice,
    check_int,
    check_lengths,
    check_positive,
    check_reduction,
    check_same_dim,
    check_tensor,
    reduce,
)
from .sampling import check_list_sizes, check_scores, sample_partial_list, teacher_ranking

LISTWISE_LOSSES = ("listmle", "listnet", "stlistnet", "ranknet", "ndcg_loss1", "ndcg_loss2", "ndcg_loss2pp")
LAMBDA_LOSSES = ("ranknet", "ndcg_loss1", "ndcg_loss2", "ndcg_loss2pp")
SUBLIST_SAMPLINGS = ("zipf", "exp", "random", "full")
LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# sub-lists and noise
# --------------------------------------------------------------------------------------------
def draw_sublists(teacher_logits: torch.Tensor, hot: int, cold: int, sampling: str = "zipf", alpha: float = 1.0,
                  generator: Optional[torch.Generator] = None,
                  lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The answers each row's loss is computed on: ``(indices [B, n], valid [B, n] bool or None)``.

    ``sampling="full"``: the whole teacher ranking (ties by lower index), ``n = N``; with
    ``lengths`` the padding columns sit at the end of each row and ``valid`` marks the first
    ``lengths[b]`` entries (``valid`` is None when every entry is valid). Otherwise the hot list
    then the cold draws of :func:`radi_fast.sampling.sample_partial_list`, ``n = hot + cold``.
    Arguments are assumed validated (as by :func:`radi_listwise_loss`).
    """
    teacher = teacher_logits.detach()
    if sampling == "full":
        indices = teacher_ranking(teacher, lengths)
        if lengths is None:
            return indices, None
        columns = torch.arange(indices.shape[1], device=indices.device)
        return indices, columns[None, :] < lengths.to(indices.device)[:, None]
    return sample_partial_list(teacher, hot, cold, sampling, alpha, generator, lengths), None


def stlistnet_uniforms(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """STListNet's uniforms ``u ~ U(0, 1)``: float64, drawn on the generator's device, clamped
    to ``[tiny, 1)`` so that ``-log(-log u)`` is finite."""
    gen_device = device if generator is None else generator.device
    u = torch.rand(shape, dtype=torch.float64, generator=generator, device=gen_device)
    return u.clamp_min_(torch.finfo(torch.float64).tiny).to(device)


# --------------------------------------------------------------------------------------------
# losses on a sub-list
# --------------------------------------------------------------------------------------------
def _order_desc(values: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Permutation of each row sorting ``values`` descending, ties by lower answer id."""
    by_id = answer_ids.argsort(dim=1)  # ids are distinct within a row: no ties here
    by_value = torch.sort(values.gather(1, by_id), dim=1, descending=True, stable=True).indices
    return by_id.gather(1, by_value)


def _listmle(s, t, answer_ids, valid):
    """Eq. 6: ``sum_i [logsumexp_{k >= i} s_{R_k} - s_{R_i}]`` over the teacher order R."""
    order = _order_desc(t if valid is None else t.masked_fill(~valid, float("-inf")), answer_ids)
    s_sorted = s.gather(1, order)
    n = s.shape[1]
    positions = torch.arange(n, device=s.device)
    n_valid = torch.full((s.shape[0], 1), n, device=s.device) if valid is None else valid.sum(1, keepdim=True)
    # Reverse each row's valid prefix (padding sorts last and stays in place): a cumulative
    # logsumexp then gives every suffix sum over valid items only, without -inf (whose
    # logcumsumexp gradient is NaN) and without touching padding.
    reverse = torch.where(positions[None, :] < n_valid, n_valid - 1 - positions[None, :], positions[None, :])
    suffix_lse = torch.logcumsumexp(s_sorted.gather(1, reverse), dim=1).gather(1, reverse)
    terms = suffix_lse - s_sorted
    if valid is not None:
        terms = torch.where(positions[None, :] < n_valid, terms, torch.zeros_like(terms))
    return terms.sum(1)


def _listnet(s, target_logits, valid):
    """Eqs. 7/8: ``-sum_i softmax(target)_i * log_softmax(s)_i``."""
    if valid is not None:
        target_logits = target_logits.masked_fill(~valid, float("-inf"))
        s = s.masked_fill(~valid, float("-inf"))
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


def _lambda_loss(loss, s, t, answer_ids, valid, sigma, mu):
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
    return _lambda_loss(loss, student_sub, teacher_sub, answer_ids, valid, sigma, mu)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def _check_options(hot, cold, sampling, alpha, loss, beta, sigma, mu, reduction):
    check_int(hot, "hot")
    check_int(cold, "cold")
    check_choice(sampling, "sampling", SUBLIST_SAMPLINGS)
    check_choice(loss, "loss", LISTWISE_LOSSES)
    check_reduction(reduction)
    return (check_positive(alpha, "alpha", allow_zero=True), check_positive(beta, "beta", allow_zero=True),
            check_positive(sigma, "sigma"), check_positive(mu, "mu", allow_zero=True))


def radi_listwise_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hot: int = 100, cold: int = 10,
                       sampling: str = "zipf", alpha: float = 1.0, loss: str = "listnet", beta: float = 1.0,
                       generator: Optional[torch.Generator] = None, *, sigma: float = 1.0, mu: float = 10.0,
                       lengths: Optional[torch.Tensor] = None, reduction: str = "mean") -> torch.Tensor:
    """RADI-L loss (sec. 3.3): a listwise loss on a hot + cold sub-list of the teacher's ranking.

    Args:
        student_logits: ``[B, N]`` student answer scores (any float dtype; gradients flow here).
        teacher_logits: ``[B, N]`` teacher answer scores (detached: a constant).
        hot: size of the hot list, the teacher's top ``hot`` answers (paper: 100).
        cold: number of answers sampled from the rest of the ranking (paper: 10).
        sampling: ``"zipf"`` (``p_r ∝ r^-alpha``), ``"exp"`` (``p_r ∝ exp(-alpha r)``),
            ``"random"`` (uniform), with ``r`` the 1-based rank within the remaining list; or
            ``"full"``: the whole teacher ranking (``hot``/``cold`` ignored).
        alpha: smoothing coefficient of the sampling law, ``>= 0``.
        loss: ``"listmle"``, ``"listnet"``, ``"stlistnet"``, ``"ranknet"``, ``"ndcg_loss1"``,
            ``"ndcg_loss2"`` or ``"ndcg_loss2pp"``.
        beta: STListNet's noise scale ``>= 0`` (``eps = -beta log(-log u)`` on the teacher scores).
        generator: ``torch.Generator`` for the cold draws and STListNet's noise (global RNG
            when None); see the module docstring for the order in which it is consumed.
        sigma: LambdaLoss's sigmoid scale ``> 0``.
        mu: NDCG-Loss2++'s weight ``>= 0`` of the NDCG-Loss2 term.
        lengths: optional ``[B]`` ints: valid answers per row (columns ``>= lengths[b]`` are
            padding, never read, and may hold non-finite values).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (``[B]``) over rows; each
            row's loss is the sum over its sub-list's items (or ordered pairs).

    Returns:
        The loss, in ``student_logits``' dtype. Conventions (tie rule, gains, where STListNet's
        noise goes, pairs of every LambdaLoss scheme) are in the module docstring.

    Raises:
        ValueError naming the argument for: non-2-D or mismatched logits, non-finite valid
        logits, negative ``hot``/``cold``, ``hot + cold`` above ``N`` (or ``min(lengths)``)
        when sampling, unknown ``sampling``/``loss``/``reduction``, negative ``alpha``/``beta``/``mu``,
        non-positive ``sigma``, bad ``lengths``.
    """
    check_tensor(student_logits, "student_logits", 2, finite=False)
    check_tensor(teacher_logits, "teacher_logits", 2, finite=False)
    check_same_dim(student_logits, "student_logits", 0, teacher_logits, "teacher_logits", 0)
    check_same_dim(student_logits, "student_logits", 1, teacher_logits, "teacher_logits", 1)
    B, N = student_logits.shape
    if N == 0:
        raise ValueError("student_logits must have at least one answer column, got shape (B, 0)")
    alpha, beta, sigma, mu = _check_options(hot, cold, sampling, alpha, loss, beta, sigma, mu, reduction)
    lengths = check_lengths(lengths, B, N)
    check_scores(student_logits, "student_logits", lengths)
    check_scores(teacher_logits, "teacher_logits", lengths)
    if sampling != "full":
        check_list_sizes(hot, cold, N, lengths)

    compute_dtype = torch.float64 if torch.float64 in (student_logits.dtype, teacher_logits.dtype) \
        else torch.float32
    answer_ids, valid = draw_sublists(teacher_logits, hot, cold, sampling, alpha, generator, lengths)
    student_sub = student_logits.gather(1, answer_ids).to(compute_dtype)
    teacher_sub = teacher_logits.detach().gather(1, answer_ids).to(compute_dtype)
    uniforms = stlistnet_uniforms(answer_ids.shape, generator, student_logits.device) \
        if loss == "stlistnet" else None
    per_row = listwise_loss_on_sublist(student_sub, teacher_sub, answer_ids, loss, valid,
                                       beta=beta, uniforms=uniforms, sigma=sigma, mu=mu)
    return reduce(per_row, reduction).to(student_logits.dtype)


class RadiListwiseLoss(nn.Module):
    """Module form of :func:`radi_listwise_loss` (same arguments and conventions).

    ``forward(student_logits, teacher_logits, generator=None, lengths=None)``.
    """

    def __init__(self, hot: int = 100, cold: int = 10, sampling: str = "zipf", alpha: float = 1.0,
                 loss: str = "listnet", beta: float = 1.0, *, sigma: float = 1.0, mu: float = 10.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        _check_options(hot, cold, sampling, alpha, loss, beta, sigma, mu, reduction)  # fail at construction
        self.hot, self.cold, self.sampling, self.alpha = hot, cold, sampling, alpha
        self.loss, self.beta, self.sigma, self.mu, self.reduction = loss, beta, sigma, mu, reduction

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                generator: Optional[torch.Generator] = None,
                lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        return radi_listwise_loss(student_logits, teacher_logits, self.hot, self.cold, self.sampling, self.alpha,
                                  self.loss, self.beta, generator, sigma=self.sigma, mu=self.mu, lengths=lengths,
                                  reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"hot={self.hot}, cold={self.cold}, sampling={self.sampling!r}, alpha={self.alpha}, "
                f"loss={self.loss!r}, beta={self.beta}, sigma={self.sigma}, mu={self.mu}, "
                f"reduction={self.reduction!r}")
