"""The literal reference: the paper's equations as written, dense, with no cleverness.

Everything here builds the tensors the paper writes down ([T, K, K] differences for eq. 5, a
dense Sinkhorn in the plain domain for Algorithm 1, a dense hinge for eq. 4), one sample at a
time. It is slow and memory-hungry on purpose: it is the ground truth the fast paths are tested
against, in float64. Do not use it for training.

The only deliberate deviations from the paper are listed in the docstrings (the Sinkhorn
stopping test, the handling of degenerate inputs) and mirrored by every fast path.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._constants import UNCERTAINTY_EPS
from ._random import pair_uniform
from ._validation import reduce
from .reference_listwise import *  # noqa: F401,F403  (the listwise side of the reference, sec. 3.3)


def pairwise_uncertainty_literal(mc_logits_one: torch.Tensor) -> torch.Tensor:
    """Eq. 5 for one sample: [T, K] -> U [K, K], ``U = (1/T) sum_k (D^k - mean D)^2``."""
    D = mc_logits_one[:, :, None] - mc_logits_one[:, None, :]  # D^k_ij = p^k(a_i) - p^k(a_j): [T, K, K]
    D_bar = D.mean(dim=0, keepdim=True)
    return ((D - D_bar) ** 2).mean(dim=0)


def auto_lam_literal(U: torch.Tensor, logit_scale: float = 0.0) -> float:
    """The "auto" smoothing factor: the mean off-diagonal uncertainty.

    1.0 when K < 2 or when the mean is rounding noise (``<= 64 (eps * max|logit|)^2``, identical
    MC passes), where any lam gives the same uniform W.
    """
    K = U.shape[0]
    if K < 2:
        return 1.0
    mean_off = float(U.sum() / (K * (K - 1)))
    return mean_off if mean_off > 64 * (torch.finfo(U.dtype).eps * logit_scale) ** 2 else 1.0


def sinkhorn_literal(U: torch.Tensor, lam: float, max_iter: int = 100, tol: float = 1e-5,
                     stop: str = "max_log") -> torch.Tensor:
    """Algorithm 1 in the plain domain for one sample: U [K, K] -> W [K, K].

    ``u, v <- 1``; ``Ũ = exp(-U / lam)`` with its diagonal set to 0; repeat
    ``u <- 1 / (Ũ v)``, ``v <- 1 / (Ũ^T u)``; ``W = diag(u) Ũ diag(v)``.

    Stopping: the paper stops when ``mean(v_t - v_{t-1}) <= 1e-8`` (``stop="paper"``, with the
    absolute value, since a signed mean can cancel). The package's default (``stop="max_log"``)
    stops when ``max |log v_t - log v_{t-1}| <= tol``, a scale-free test that the log-domain fast
    paths get for free; ``tol=0`` runs exactly ``max_iter`` iterations.
    K < 2 has no pair: W is all zeros.
    """
    K = U.shape[0]
    if K < 2:
        return torch.zeros_like(U)
    U_tilde = torch.exp(-U / lam)
    U_tilde = U_tilde * (1 - torch.eye(K, dtype=U.dtype, device=U.device))  # ignore the self-pairs
    u = torch.ones(K, dtype=U.dtype, device=U.device)
    v = torch.ones(K, dtype=U.dtype, device=U.device)
    for _ in range(max_iter):
        u = 1.0 / (U_tilde @ v)
        v_new = 1.0 / (U_tilde.T @ u)
        if stop == "paper":
            delta = float((v_new - v).abs().mean())
        else:
            delta = float((torch.log(v_new) - torch.log(v)).abs().max())
        v = v_new
        if delta <= tol:
            break
    return u[:, None] * U_tilde * v[None, :]


def margin_weights_literal(U: torch.Tensor, margin_mode: str, lam: Optional[float], max_iter: int, tol: float,
                           seed: int = 0, row: int = 0, answer_ids: Optional[torch.Tensor] = None,
                           logit_scale: float = 0.0) -> torch.Tensor:
    """W for one sample under each margin mode of Table 3 (diagonal irrelevant: no self-pairs)."""
    K = U.shape[0]
    if margin_mode == "ot":
        return sinkhorn_literal(U, auto_lam_literal(U, logit_scale) if lam is None else lam, max_iter, tol)
    if margin_mode == "uniform":
        return torch.ones_like(U)
    if margin_mode == "uncertainty":
        return 1.0 / (U + UNCERTAINTY_EPS)
    if margin_mode == "random":
        ids = torch.arange(K) if answer_ids is None else answer_ids.cpu()
        w = pair_uniform(seed, torch.tensor(row), ids[:, None], ids[None, :])
        return w.to(dtype=U.dtype, device=U.device)
    raise ValueError(f"unknown margin_mode {margin_mode!r}")


def margin_ranking_loss_literal(student: torch.Tensor, teacher: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Eq. 4 for one sample: ``(1/|R_p|) sum_{(i,j) in R_p} max(0, M_ij - (s_i - s_j))``.

    ``R_p = {(i, j) : p_T(a_i) > p_T(a_j)}``. With no ordered pair (all teacher scores tied,
    or K = 1) the loss is defined as 0.
    """
    pairs = (teacher[:, None] > teacher[None, :]).to(student.dtype)
    n_pairs = pairs.sum()
    hinge = torch.clamp(M - (student[:, None] - student[None, :]), min=0)
    if n_pairs == 0:
        return (hinge * pairs).sum()  # 0, still attached to the graph
    return (hinge * pairs).sum() / n_pairs


def radi_pairwise_loss_literal(student_logits: torch.Tensor, teacher_mc_logits: torch.Tensor,
                               teacher_logits: Optional[torch.Tensor] = None, margin: float = 1.0,
                               margin_mode: str = "ot", lam="auto", top_k: int = 2500, max_iter: int = 100,
                               tol: float = 1e-5, reduction: str = "mean", seed: int = 0,
                               lengths: Optional[torch.Tensor] = None,
                               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RADI-P (sec. 3.2), literally, one sample at a time.

    Per sample: the teacher's ranking (teacher_logits, default the mean of the MC passes,
    sorted descending, ties by lower index), truncated to its top ``top_k`` valid answers;
    U by eq. 5 on those answers; W by ``margin_mode``; ``M = margin * W``; eq. 4. The batch
    loss is the mean (or sum) of the per-sample losses. Teacher inputs are constants.
    ``seed`` feeds the "random" mode's counter-based uniforms (see ``radi_fast._random``).
    Valid answers: the first ``lengths[b]`` columns, and only those where ``mask[b]`` is True;
    the others are never read (a sample without valid answers contributes 0).
    """
    B, T, N = teacher_mc_logits.shape
    mc = teacher_mc_logits.detach()
    t_all = mc.mean(dim=1) if teacher_logits is None else teacher_logits.detach()
    losses = []
    for b in range(B):
        n_valid = N if lengths is None else int(lengths[b])
        ids = torch.arange(n_valid, device=mc.device)
        if mask is not None:
            ids = ids[mask[b, :n_valid].to(mc.device)]
        if len(ids) == 0:
            losses.append(student_logits[b, :0].sum())
            continue
        order = ids[torch.sort(t_all[b, ids], descending=True, stable=True).indices[:top_k]]
        U = pairwise_uncertainty_literal(mc[b][:, order])
        W = margin_weights_literal(U, margin_mode, None if lam == "auto" else float(lam), max_iter, tol,
                                   seed=seed, row=b, answer_ids=order, logit_scale=float(mc[b][:, order].abs().max()))
        losses.append(margin_ranking_loss_literal(student_logits[b, order], t_all[b, order], margin * W))
    per_sample = torch.stack(losses)
    return reduce(per_sample, reduction)


def classification_loss_literal(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 2 with a multi-hot ``targets``, one sample at a time, batch mean."""
    out = []
    for b in range(logits.shape[0]):
        labelled = torch.nonzero(targets[b]).flatten()
        P = torch.exp(logits[b]) / torch.exp(logits[b]).sum()  # eq. 1
        out.append(-torch.log(P[labelled]).sum() / len(labelled))
    return torch.stack(out).mean()
