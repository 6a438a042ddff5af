"""RADI-L (sec. 3.3): partial listwise ranking distillation.

Per row, a sub-list of the teacher's ranking (the hot list, the teacher's top ``hot``, and the
cold list, ``cold`` answers sampled by rank from the rest: :mod:`radi_fast.sampling`) and a list
loss that makes the student's scores on it mimic the teacher's ranking: "listmle" (eq. 6),
"listnet" (eq. 7), "stlistnet" (eq. 8), and the LambdaLoss family "ranknet", "ndcg_loss1",
"ndcg_loss2", "ndcg_loss2pp" (eq. 9). The math lives in ``ops/listwise.py``; the conventions
(tie rule, ListMLE/ListNet on ties, where STListNet's noise goes, LambdaLoss pairs and gains,
reduction, the order in which ``generator`` is consumed) in docs/listwise.md.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ._constants import LAMBDA_LOSSES, LISTWISE_LOSSES, SUBLIST_SAMPLINGS  # noqa: F401  (re-exported)
from ._validation import (
    check_choice,
    check_generator,
    check_int,
    check_positive,
    check_reduction,
    check_same_dim,
    check_scores,
    check_tensor,
    combine_valid,
    reduce,
)
from .ops.autograd import no_autocast
from .ops.listwise import listwise_loss_on_sublist
from .sampling import draw_partial_lists, teacher_ranking


def draw_sublists(teacher_logits: torch.Tensor, hot: int, cold: int, sampling: str = "zipf", alpha: float = 1.0,
                  generator: Optional[torch.Generator] = None,
                  lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The answers each row's loss is computed on: ``(indices [B, n], valid [B, n] bool or None)``.

    ``lengths``: None, [B] numbers of valid answers or a [B, N] bool mask of them (``L_b`` per
    row). ``sampling="full"``: the whole teacher ranking (ties by lower index), ``n = N``, the
    first ``L_b`` entries valid. Otherwise the hot list then the cold draws
    (:func:`radi_fast.sampling.draw_partial_lists`), ``n = hot' + cold'`` with
    ``hot' = min(hot, N)``, ``cold' = min(cold, N - hot')``; a row with fewer valid answers uses
    what it has: ``min(hot, L_b)`` hot answers, then ``min(cold, L_b - hot)`` cold ones.
    ``valid`` is None when every entry is valid. Arguments are assumed validated (as by
    :func:`radi_listwise_loss`).
    """
    teacher = teacher_logits.detach()
    B, N = teacher.shape
    if sampling == "full":
        indices = teacher_ranking(teacher, lengths)
        if lengths is None:
            return indices, None
        n_valid = lengths.to(indices.device) if lengths.dim() == 1 else lengths.sum(dim=1)
        columns = torch.arange(indices.shape[1], device=indices.device)
        return indices, columns[None, :] < n_valid[:, None]
    hot = min(hot, N)
    cold = min(cold, N - hot)
    return draw_partial_lists(teacher, hot, cold, sampling, alpha, generator, lengths)


def stlistnet_uniforms(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """STListNet's uniforms ``u ~ U(0, 1)``: float64, drawn on the generator's device, clamped
    to ``[tiny, 1)`` so that ``-log(-log u)`` is finite."""
    gen_device = device if generator is None else generator.device
    u = torch.rand(shape, dtype=torch.float64, generator=generator, device=gen_device)
    return u.clamp_min_(torch.finfo(torch.float64).tiny).to(device)


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
                       lengths: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                       reduction: str = "mean") -> torch.Tensor:
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
            when None); see the module docstring for the order in which it is consumed. Under
            ``torch.compile`` leave it None (Dynamo cannot trace a Generator argument).
        sigma: LambdaLoss's sigmoid scale ``> 0``.
        mu: NDCG-Loss2++'s weight ``>= 0`` of the NDCG-Loss2 term.
        lengths: optional ``[B]`` ints: valid answers per row (columns ``>= lengths[b]`` are
            padding).
        mask: optional ``[B, N]`` bool, True = a valid answer (any positions); combined with
            ``lengths`` when both are given. Invalid answers are never ranked, sampled or read:
            they never influence the loss, their gradient is exactly 0 and they may hold
            NaN/inf. A row with ``L_b < hot + cold`` valid answers uses what it has: its top
            ``min(hot, L_b)`` answers, then ``min(cold, L_b - hot)`` cold draws (no error, and
            no effect on the other rows); so does every row when ``hot + cold > N``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (``[B]``) over rows. An empty
            batch (B = 0) gives 0 for ``"mean"`` and ``"sum"``; rows without answers (N = 0)
            give 0, like fully masked rows (the README's rule for empty batches).

    Returns:
        The loss in fp32 for fp16/bf16/fp32 inputs, fp64 when an input is fp64 (also under
        ``torch.autocast``, which the computation ignores); the gradient reaches
        ``student_logits`` in its dtype. Conventions (tie rule, gains, where STListNet's noise
        goes, pairs of every LambdaLoss scheme) are in the module docstring.

    Scale: each row's loss is the **sum** over its sub-list's items (ListMLE, ListNet,
    STListNet) or ordered pairs (the LambdaLoss family), not a mean: it grows with the list
    length ``n = hot + cold`` (ListNet is at least ``log n`` and typically several times that;
    ListMLE and the pair losses grow like ``n log n`` and ``n^2``), well above RADI-P's per-pair
    mean (random scores, N = 2500, hot 100 + cold 10: RADI-P 0.56, ListNet 5.1, ListMLE 456,
    RankNet 7566): weigh them accordingly. The trainer (``radi_fast.train``) adds
    ``radi_l_alpha * loss`` with ``radi_l_alpha = 1``.

    No host synchronisation on CUDA: value checks follow :func:`radi_fast.set_value_checks`, and
    the sub-lists come from the compiled op (seeds from a CPU generator, read on the host
    without a device sync) or from the PyTorch op (masks, a CUDA generator; seeds stay on the
    device). Under CUDA-graph capture, seeds drawn from a CPU generator are fixed at capture;
    pass a CUDA ``generator`` (registered with the graph) for fresh draws at every replay.

    Raises:
        ValueError naming the argument for: non-2-D or mismatched logits, non-finite valid
        logits (where the value checks run), negative ``hot``/``cold``, unknown
        ``sampling``/``loss``/``reduction``, negative ``alpha``/``beta``/``mu``, non-positive
        ``sigma``, bad ``lengths`` or ``mask``.
    """
    check_tensor(student_logits, "student_logits", 2, finite=False)
    check_tensor(teacher_logits, "teacher_logits", 2, finite=False)
    check_same_dim(student_logits, "student_logits", 0, teacher_logits, "teacher_logits", 0)
    check_same_dim(student_logits, "student_logits", 1, teacher_logits, "teacher_logits", 1)
    B, N = student_logits.shape
    alpha, beta, sigma, mu = _check_options(hot, cold, sampling, alpha, loss, beta, sigma, mu, reduction)
    check_generator(generator)
    valid_answers = combine_valid(mask, lengths, B, N, student_logits.device)
    check_scores(student_logits, "student_logits", valid_answers)
    check_scores(teacher_logits, "teacher_logits", valid_answers)

    compute_dtype = torch.float64 if torch.float64 in (student_logits.dtype, teacher_logits.dtype) \
        else torch.float32
    answer_ids, valid = draw_sublists(teacher_logits, hot, cold, sampling, alpha, generator, valid_answers)
    with no_autocast(student_logits):
        student_sub = student_logits.gather(1, answer_ids).to(compute_dtype)
        teacher_sub = teacher_logits.detach().gather(1, answer_ids).to(compute_dtype)
        uniforms = stlistnet_uniforms(answer_ids.shape, generator, student_logits.device) \
            if loss == "stlistnet" else None
        per_row = listwise_loss_on_sublist(student_sub, teacher_sub, answer_ids, loss, valid,
                                           beta=beta, uniforms=uniforms, sigma=sigma, mu=mu)
        return reduce(per_row, reduction)


class RadiListwiseLoss(nn.Module):
    """Module form of :func:`radi_listwise_loss` (same arguments and conventions).

    ``forward(student_logits, teacher_logits, generator=None, lengths=None, mask=None)``.
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
                lengths: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return radi_listwise_loss(student_logits, teacher_logits, self.hot, self.cold, self.sampling, self.alpha,
                                  self.loss, self.beta, generator, sigma=self.sigma, mu=self.mu, lengths=lengths,
                                  mask=mask, reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"hot={self.hot}, cold={self.cold}, sampling={self.sampling!r}, alpha={self.alpha}, "
                f"loss={self.loss!r}, beta={self.beta}, sigma={self.sigma}, mu={self.mu}, "
                f"reduction={self.reduction!r}")
