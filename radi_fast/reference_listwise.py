"""The literal reference for RADI-L (sec. 3.3): eqs. 6-9 and the sampling law, written out.

One row at a time, with Python loops and the ``math`` module for everything that does not need
a gradient (rankings, softmax targets, gains, discounts, lambda weights, sampling
probabilities); torch only where the student's gradient must flow. Slow on purpose: it is the
ground truth for :mod:`radi_fast.listwise` and :mod:`radi_fast.sampling`, in float64.

Conventions are those of :mod:`radi_fast.listwise` (tie rule: higher score first, then lower
answer index; ranks within the remaining list are 1-based; gains from the softmax of the
teacher scores; positions from the student's ranking; every LambdaLoss scheme on
``R_p = {(i, j): t_i > t_j}``). Sampling itself is random, so the reference gives its
*probabilities*; the losses take the sub-lists (and STListNet's uniforms) as inputs.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from ._validation import reduce

__all__ = [
    "draw_probability_literal",
    "lambda_loss_literal",
    "listmle_literal",
    "listnet_literal",
    "listwise_row_loss_literal",
    "radi_listwise_loss_literal",
    "rank_probabilities_literal",
    "stlistnet_literal",
    "teacher_ranking_literal",
]


# --------------------------------------------------------------------------------------------
# rankings and the sampling law
# --------------------------------------------------------------------------------------------
def teacher_ranking_literal(scores: Sequence[float], length: Optional[int] = None) -> List[int]:
    """Answer indices ``0..length-1`` by descending score, ties by lower index."""
    n = len(scores) if length is None else length
    return sorted(range(n), key=lambda i: (-float(scores[i]), i))


def rank_probabilities_literal(n_remaining: int, scheme: str, alpha: float) -> List[float]:
    """``p_r`` for ranks ``r = 1..n_remaining`` within the remaining list, normalised.

    exp: ``p_r ∝ exp(-alpha r)``; zipf: ``p_r ∝ r^-alpha``; random: uniform.
    """
    if scheme == "exp":
        weights = [math.exp(-alpha * (r - 1)) for r in range(1, n_remaining + 1)]  # /exp(-alpha): no underflow of p_1
    elif scheme == "zipf":
        weights = [r ** -alpha for r in range(1, n_remaining + 1)]
    elif scheme == "random":
        weights = [1.0] * n_remaining
    else:
        raise ValueError(f"unknown scheme {scheme!r}")
    total = sum(weights)
    return [w / total for w in weights]


def draw_probability_literal(drawn_ranks: Sequence[int], probabilities: Sequence[float]) -> float:
    """Probability of drawing ``drawn_ranks`` (1-based, in order) by sequential sampling without
    replacement from ``probabilities`` (each draw renormalised over the ranks left)."""
    left = dict(enumerate(probabilities, start=1))
    probability = 1.0
    for r in drawn_ranks:
        probability *= left[r] / sum(left.values())
        del left[r]
    return probability


# --------------------------------------------------------------------------------------------
# eqs. 6-9 on one sub-list
# --------------------------------------------------------------------------------------------
def _softmax(values: Sequence[float]) -> List[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _log_softmax(s: torch.Tensor) -> torch.Tensor:
    return s - torch.logsumexp(s, dim=0)


def listmle_literal(s: torch.Tensor, t: Sequence[float], answer_ids: Sequence[int]) -> torch.Tensor:
    """Eq. 6: ``-log prod_i exp(s_{R_i}) / sum_{k >= i} exp(s_{R_k})``, R the teacher order."""
    n = len(t)
    R = sorted(range(n), key=lambda a: (-t[a], answer_ids[a]))
    total = s.new_zeros(())
    for i in range(n):
        tail = torch.stack([s[R[k]] for k in range(i, n)])
        total = total - (s[R[i]] - torch.logsumexp(tail, dim=0))  # -log of the i-th factor
    return total


def listnet_literal(s: torch.Tensor, t: Sequence[float]) -> torch.Tensor:
    """Eq. 7: ``-sum_i phi(t)_i log phi(s)_i`` with phi the softmax."""
    target = _softmax(t)
    log_phi_s = _log_softmax(s)
    total = s.new_zeros(())
    for i in range(len(t)):
        total = total - target[i] * log_phi_s[i]
    return total


def stlistnet_literal(s: torch.Tensor, t: Sequence[float], uniforms: Sequence[float], beta: float) -> torch.Tensor:
    """Eq. 8: ListNet on ``t_i + eps_i``, ``eps_i = -beta log(-log u_i)`` (noise on the teacher)."""
    tiny = torch.finfo(torch.float64).tiny
    noisy = [t[i] - beta * math.log(-math.log(max(float(uniforms[i]), tiny))) for i in range(len(t))]
    return listnet_literal(s, noisy)


def lambda_loss_literal(s: torch.Tensor, t: Sequence[float], answer_ids: Sequence[int], scheme: str,
                        sigma: float = 1.0, mu: float = 10.0) -> torch.Tensor:
    """Eq. 9: ``-sum_{(i, j): t_i > t_j} w_ij log2 sigmoid(sigma (s_i - s_j))``.

    ``rel = softmax(t)``, ``G_i = (2^rel_i - 1) / maxDCG`` (ideal DCG over the whole sub-list),
    ``D(p) = log2(1 + p)``, ``pos_i`` = position of i in the student's ranking (ties by lower id).
    ranknet ``w = 1``; ndcg_loss1 ``G_i / D(pos_i)``; ndcg_loss2
    ``|1/D(|pos_i - pos_j|) - 1/D(|pos_i - pos_j| + 1)| |G_i - G_j|``; ndcg_loss2pp
    ``mu * ndcg_loss2 + |1/D(pos_i) - 1/D(pos_j)| |G_i - G_j|``.
    """
    n = len(t)
    rel = _softmax(t)
    gain = [2.0 ** r - 1.0 for r in rel]
    ideal = sorted(gain, reverse=True)
    max_dcg = sum(ideal[p - 1] / math.log2(1 + p) for p in range(1, n + 1))
    G = [g / max_dcg for g in gain]
    s_values = s.detach().tolist()
    student_order = sorted(range(n), key=lambda a: (-s_values[a], answer_ids[a]))
    pos = [0] * n
    for p, a in enumerate(student_order, start=1):
        pos[a] = p

    def D(p: int) -> float:
        return math.log2(1 + p)

    W = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if not t[i] > t[j]:
                continue  # only the pairs the teacher orders
            if scheme == "ranknet":
                w = 1.0
            elif scheme == "ndcg_loss1":
                w = G[i] / D(pos[i])
            else:
                gap = abs(pos[i] - pos[j])
                w = abs(1 / D(gap) - 1 / D(gap + 1)) * abs(G[i] - G[j])
                if scheme == "ndcg_loss2pp":
                    w = mu * w + abs(1 / D(pos[i]) - 1 / D(pos[j])) * abs(G[i] - G[j])
                elif scheme != "ndcg_loss2":
                    raise ValueError(f"unknown scheme {scheme!r}")
            W[i][j] = w
    weights = torch.tensor(W, dtype=s.dtype, device=s.device)
    log2_sigmoid = F.logsigmoid(sigma * (s[:, None] - s[None, :])) / math.log(2.0)  # log2 sigmoid, no underflow
    return -(weights * log2_sigmoid).sum()


def listwise_row_loss_literal(s: torch.Tensor, t: Sequence[float], answer_ids: Sequence[int], loss: str, *,
                              beta: float = 1.0, uniforms: Optional[Sequence[float]] = None, sigma: float = 1.0,
                              mu: float = 10.0) -> torch.Tensor:
    """One row's loss on its sub-list: ``s`` the student's sub-list scores (1-D tensor),
    ``t`` the teacher's (floats), ``answer_ids`` their answer indices."""
    if len(t) == 0:
        return s.sum()
    if loss == "listmle":
        return listmle_literal(s, t, answer_ids)
    if loss == "listnet":
        return listnet_literal(s, t)
    if loss == "stlistnet":
        return stlistnet_literal(s, t, uniforms, beta)
    return lambda_loss_literal(s, t, answer_ids, loss, sigma, mu)


def radi_listwise_loss_literal(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                               sublists: Sequence[Sequence[int]], loss: str = "listnet", *, beta: float = 1.0,
                               uniforms=None, sigma: float = 1.0, mu: float = 10.0,
                               reduction: str = "mean") -> torch.Tensor:
    """RADI-L on given sub-lists, one row at a time.

    ``sublists[b]``: the answer indices of row b's sub-list (valid answers only, any order);
    ``uniforms[b][i]``: STListNet's uniform for the i-th entry of ``sublists[b]``. Per-row loss
    = sum over items/pairs; ``reduction`` "mean", "sum" or "none" over rows.
    """
    losses = []
    for b, ids in enumerate(sublists):
        ids = [int(a) for a in ids]
        s = torch.stack([student_logits[b, a] for a in ids]) if ids else student_logits[b, :0]
        t = [float(teacher_logits[b, a]) for a in ids]
        u = None if uniforms is None else [float(x) for x in uniforms[b][: len(ids)]]
        losses.append(listwise_row_loss_literal(s, t, ids, loss, beta=beta, uniforms=u, sigma=sigma, mu=mu))
    per_row = torch.stack(losses)
    return reduce(per_row, reduction)
