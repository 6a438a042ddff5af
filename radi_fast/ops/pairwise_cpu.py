"""RADI-P on the CPU (any device, in PyTorch): blockwise, never the [B, T, K, K] tensor of eq. 5.

Algorithm 1 runs on the rank-T kernel ``2 <z_i, z_j> / (T lam)`` of one chunk of samples (the
rank-one parts of the cost folded into the potentials, docs/design.md), in the plain domain when
that is exact to rounding and in the log domain otherwise; eq. 4 and its gradient come from one
pass over the upper triangle in row blocks. The op ``torch.ops.radi_fast.pairwise_loss_cpu``
returns each sample's loss and its gradient w.r.t. the student (ops/autograd.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .._constants import UNCERTAINTY_EPS
from .._random import pair_uniform
from .autograd import fake_outputs, no_autocast, precomputed_gradient_call
from .sinkhorn_cpu import CPU_ROW_BLOCK_ELEMENTS, SinkhornSolution, chunks, mean_offdiagonal_uncertainty, solve_chunk
from .teacher import (compute_dtype, kernel_lam, negligible_uncertainty, real_units, teacher_top_k, tie_groups,
                      unit_scale)

# Elements of the materialised K x K kernel of a chunk of samples (32 MB in fp32): samples go
# through Sinkhorn in chunks that fit (at least one sample per chunk).
CPU_BLOCK_ELEMENTS = 1 << 23
OP_NAME = "radi_fast::pairwise_loss_cpu"


# ----------------------------------------------------------------------------- preparation
@dataclass
class PairwiseProblem:
    """One batch of teacher-side quantities on the top-k answers, padded to ``K = max_b K_b``.

    points: centred MC logits ``z`` [B, K, T] (0 on padding), scaled per sample by a power of
    two so the largest |logit| is in [0.5, 1) (ops/teacher.py ``unit_scale``: exact); sq:
    ``||z_i||^2`` [B, K]; teacher: teacher scores [B, K]; valid: [B, K] bool; answer_ids: [B, K]
    column ids in the student's [B, N]; n_valid: [B] K_b; lam: [B] in the caller's units;
    inv_scale: ``1 / lam`` [B] in the scaled units (the solver's: floored and capped,
    ``kernel_lam``); unit: [B] the caller's U per scaled U.
    """

    points: torch.Tensor
    sq: torch.Tensor
    teacher: torch.Tensor
    valid: torch.Tensor
    answer_ids: torch.Tensor
    n_valid: torch.Tensor
    lam: torch.Tensor
    inv_scale: torch.Tensor
    unit: torch.Tensor

    @property
    def T(self) -> int:
        return self.points.shape[2]


def auto_lam_from_points(points: torch.Tensor, sq: torch.Tensor, n_valid: torch.Tensor,
                         logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal U per sample in O(K T): ``sum_ij U_ij = (2 K sum_i s_i - 2 ||sum_i z_i||^2) / T``.

    A mean at the level of rounding noise (identical MC passes) counts as no uncertainty: lam = 1.
    """
    mean_off = mean_offdiagonal_uncertainty(points, sq, n_valid)
    meaningful = (n_valid >= 2) & (mean_off > negligible_uncertainty(logit_scale, points.dtype))
    return torch.where(meaningful, mean_off, torch.ones_like(mean_off))


def prepare_pairwise(teacher_mc_logits: torch.Tensor, teacher_logits: Optional[torch.Tensor], top_k: int,
                     lam: Optional[float], valid: Optional[torch.Tensor]) -> PairwiseProblem:
    """Top-k gather, centring and the per-sample scale: everything O(B K T) before the K x K work.

    ``valid``: None, [B] lengths or a [B, N] bool mask (``ops.teacher.teacher_top_k``); padding
    never reaches the arithmetic (it may hold NaN/inf)."""
    dtype = compute_dtype(teacher_mc_logits, teacher_logits)
    mc = teacher_mc_logits.detach().to(dtype)
    teacher = mc.mean(dim=1) if teacher_logits is None else teacher_logits.detach().to(dtype)
    order, valid, n_valid = teacher_top_k(teacher, top_k, valid)
    B, T, _ = mc.shape
    gathered = mc.gather(2, order[:, None, :].expand(B, T, order.shape[1]))  # [B, T, K]
    gathered = gathered.masked_fill(~valid[:, None, :], 0)  # padding may be NaN: 0 * NaN would spread it
    amax = gathered.abs().amax(dim=(1, 2)) if gathered.numel() else gathered.new_zeros(B)
    factor = unit_scale(amax)  # exact powers of two: the scaled problem has the same bits
    gathered = gathered * factor.to(dtype)[:, None, None]
    points = (gathered - gathered.mean(dim=1, keepdim=True)).transpose(1, 2).contiguous()
    points = points * valid[:, :, None]
    sq = (points * points).sum(-1)
    unit = real_units(factor, dtype)
    if lam is None:
        lam_k = auto_lam_from_points(points, sq, n_valid, (amax * factor).to(dtype))
        lam_b = (lam_k.double() / factor / factor).clamp(max=torch.finfo(dtype).max).to(dtype)  # factor^2 may underflow
        factor = torch.ones_like(factor)
    else:
        lam_k = lam_b = torch.full((B,), lam, dtype=torch.float64, device=mc.device)
    T = points.shape[2]
    max_cost = 4 * sq.amax(dim=1) / T if sq.numel() else sq.new_zeros(B)  # >= max U (Cauchy-Schwarz)
    lam_k = kernel_lam(lam_k, factor, max_cost, dtype)
    return PairwiseProblem(points=points, sq=sq, teacher=teacher.gather(1, order), valid=valid, answer_ids=order,
                           n_valid=n_valid, lam=lam_b.to(dtype), inv_scale=1.0 / lam_k, unit=unit)


# ----------------------------------------------------------------------------- K x K blocks
def squared_distances(points: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """``||z_i - z_j||^2`` for points [b, K, T], rows, columns: [b, r, c], from the direct
    differences (as the Triton kernel; ``cdist`` without its matrix-product shortcut): exactly 0
    for identical answers and exactly symmetric, where the norm expansion ``s_i + s_j - 2 <z_i,
    z_j>`` leaves rounding noise (1.9e-7 for two identical answers, so "uncertainty" margins of
    1e6 came out 8.4e5)."""
    d = torch.cdist(points[:, rows], points[:, cols], compute_mode="donot_use_mm_for_euclid_dist")
    return d.square_()


def uncertainty_block(p: PairwiseProblem, s: slice, rows: slice, cols: slice = slice(None)) -> torch.Tensor:
    """``U[b, i, j] = ||z_i - z_j||^2 / T`` in the caller's units for samples ``s``, rows, columns:
    [b, r, c] (direct differences: exact 0 for identical answers, symmetric; may be inf where the
    caller's U overflows the dtype, which gives the weight 1 / (U + eps) = 0 it rounds to)."""
    U = squared_distances(p.points[s], rows, cols).div_(p.T)
    return U.mul_(p.unit[s, None, None])


def sinkhorn_log_potentials_cpu(p: PairwiseProblem, max_iter: int, tol: float, s: slice,
                                out: Optional[torch.Tensor] = None, scheme: str = "plain",
                                with_error: bool = False) -> SinkhornSolution:
    """Algorithm 1 (``scheme``: ops/sinkhorn_cpu.py) for the samples ``s``, a chunk whose K x K
    kernel fits the memory budget; each sample stops on its own test."""
    return solve_chunk(p.points[s], p.sq[s], p.inv_scale[s], p.n_valid[s], p.valid[s], max_iter, tol, scheme, out,
                       with_error)


def margin_weights_block(p: PairwiseProblem, mode: str, s: slice, rows: slice, cols: slice,
                         solution: Optional[SinkhornSolution], seed: int) -> torch.Tensor:
    """W for samples ``s``, rows and columns ([b, r, c]; arbitrary off the allowed pairs)."""
    dtype = p.points.dtype
    if mode == "uniform":
        return torch.ones(1, 1, 1, dtype=dtype, device=p.points.device)
    if mode == "random":
        sample_rows = torch.arange(p.points.shape[0], device=p.points.device)[s]
        ids = p.answer_ids[s]
        return pair_uniform(seed, sample_rows[:, None, None], ids[:, rows, None], ids[:, None, cols]).to(dtype)
    if mode == "uncertainty":
        return uncertainty_block(p, s, rows, cols).add_(UNCERTAINTY_EPS).reciprocal_()
    return solution.weights(rows, cols)


def pairwise_hinge_cpu(student: torch.Tensor, p: PairwiseProblem, margin: float, mode: str, max_iter: int,
                       tol: float, seed: int, scheme: str = "plain"):
    """Per-sample eq. 4 losses [B] and their gradient w.r.t. the gathered student scores [B, K].

    Forward and backward share one blockwise pass over the upper triangle (the answers are in
    teacher order, so every ordered pair has i < j): ``dL/ds_i = (1/|R_p|) (#{j: j≻i active}
    - #{j: i≻j active})`` (docs/design.md), so nothing K x K outlives a block. Each block is one
    [b, r, c] tensor worked in place: margins, ``+ s_j - s_i``, the hinge, the pair mask (only the
    diagonal square when the block has no teacher tie and no padding), the loss sum, then its
    sign (1 where active) summed along rows and columns for the gradient.
    """
    B, K = student.shape
    loss = student.new_zeros(B)
    grad = torch.zeros_like(student)
    iterations = torch.zeros(B, dtype=torch.int64, device=student.device)
    n_valid = p.n_valid.to(student.device)
    _, tie_end, n_pairs = tie_groups(p.teacher, p.valid, n_valid)
    n_pairs = n_pairs.to(student.dtype)
    col_ids = torch.arange(K, device=student.device)
    # rows whose ordered pairs are exactly j > i (no tie with the next answer, valid, no padding)
    plain_row = (tie_end == col_ids[None, :] + 1) & p.valid & (n_valid[:, None] == K)
    sample_chunk = max(1, CPU_BLOCK_ELEMENTS // max(1, K * K))
    workspace = student.new_empty(min(B, sample_chunk) * K * K) if mode == "ot" and B else None
    for s in chunks(B, sample_chunk):
        solution = sinkhorn_log_potentials_cpu(p, max_iter, tol, s, workspace, scheme) if mode == "ot" else None
        if solution is not None:
            iterations[s] = solution.iterations
        row_block = max(1, CPU_ROW_BLOCK_ELEMENTS // max(1, (s.stop - s.start) * K))
        for rows in chunks(K, row_block):
            cols = slice(rows.start + 1, K)  # j > i for every ordered pair of these rows
            if cols.start >= K:
                continue
            if mode == "ot":  # margin * W, then + s_j - s_i, in place
                hinge = solution.weights(rows, cols, margin).add_(student[s, None, cols]).sub_(student[s, rows, None])
            else:
                M = margin_weights_block(p, mode, s, rows, cols, solution, seed)
                hinge = (student[s, None, cols] - student[s, rows, None]).add_(M * margin if margin != 1.0 else M)
            hinge.clamp_min_(0)
            if bool(plain_row[s, rows].all()):
                r = rows.stop - rows.start
                hinge[:, :, :r].triu_()  # local column c is answer rows.start + 1 + c: keep c >= row
            else:
                c = col_ids[cols]
                ordered = (c[None, None, :] >= tie_end[s, rows, None]) & (c[None, None, :] < n_valid[s, None, None])
                ordered &= p.valid[s, rows, None]
                hinge.masked_fill_(~ordered, 0)
            loss[s] += hinge.sum(dim=(1, 2))
            active = hinge.sign_()  # 1 where the hinge is positive, 0 elsewhere
            grad[s, rows] -= active.sum(dim=2)
            grad[s, cols] += active.sum(dim=1)
    scale = torch.where(n_pairs > 0, 1.0 / n_pairs.clamp(min=1), torch.zeros_like(n_pairs))
    return loss * scale, grad * scale[:, None], iterations


def solve_sinkhorn(p: PairwiseProblem, max_iter: int, tol: float, scheme: str = "plain",
                   with_error: bool = False):
    """Natural-log potentials ``(f, g)`` [B, K] of the whole batch, chunked as the loss chunks it,
    then ``iterations`` [B] and (``with_error``) the marginal error [B], else None."""
    B, K = p.points.shape[0], p.points.shape[1]
    chunk = max(1, CPU_BLOCK_ELEMENTS // max(1, K * K))
    workspace = p.points.new_empty(min(B, chunk) * K * K) if B else None
    parts = [sinkhorn_log_potentials_cpu(p, max_iter, tol, s, workspace, scheme, with_error) for s in chunks(B, chunk)]
    if not parts:
        empty = p.sq.new_zeros(0)
        return p.sq.clone(), p.sq.clone(), empty.long(), empty if with_error else None
    f, g = torch.cat([q.f for q in parts]), torch.cat([q.g for q in parts])
    iterations = torch.cat([q.iterations for q in parts])
    error = torch.cat([q.marginal_error for q in parts]) if with_error else None
    return f, g, iterations, error


def uncertainty_dense(mc_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 5 densely, [B, T, K] -> U [B, K, K] (diagonal 0), from the direct differences of the
    centred points (exact 0 for identical answers, symmetric); inf where U overflows the dtype."""
    dtype = compute_dtype(mc_logits)
    mc = mc_logits.to(dtype)
    factor = unit_scale(mc.abs().amax(dim=(1, 2)) if mc.numel() else mc.new_zeros(mc.shape[0]))
    mc = mc * factor.to(dtype)[:, None, None]  # exact: no overflow of the squares (logits ~1e19 in fp32)
    z = (mc - mc.mean(dim=1, keepdim=True)).transpose(1, 2).contiguous()
    U = squared_distances(z, slice(None), slice(None)).div_(z.shape[2])
    return U.mul_(real_units(factor, dtype)[:, None, None])


def sinkhorn_weights_dense(mc_logits: torch.Tensor, lam: Optional[float], max_iter: int, tol: float,
                           scheme: str = "plain"):
    """Algorithm 1's W [B, K, K] on every answer of ``mc_logits`` [B, T, K] in their own order
    (diagonal 0), with the iterations [B] and the marginal error [B]; ``lam`` None is "auto"."""
    B, _, K = mc_logits.shape
    tied = torch.zeros(B, K, dtype=mc_logits.dtype, device=mc_logits.device)  # stable sort: identity order
    p = prepare_pairwise(mc_logits, tied, K, lam, None)
    solution = sinkhorn_log_potentials_cpu(p, max_iter, tol, slice(None), scheme=scheme, with_error=True)
    W = solution.weights(slice(None), slice(None))
    off_diagonal = ~torch.eye(K, dtype=torch.bool, device=W.device)
    return torch.where(off_diagonal, W, torch.zeros((), dtype=W.dtype)), solution.iterations, solution.marginal_error


# ----------------------------------------------------------------------------- torch.library op
def pairwise_forward_cpu(student_logits, teacher_mc_logits, teacher_logits, valid, margin: float, mode: str,
                         lam: Optional[float], top_k: int, max_iter: int, tol: float, seed: int,
                         scheme: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-sample losses [B], gradient of each sample's loss w.r.t. ``student_logits`` [B, N],
    Sinkhorn iterations [B])."""
    problem = prepare_pairwise(teacher_mc_logits, teacher_logits, top_k, lam, valid)
    dtype = problem.points.dtype
    student = student_logits.detach().to(dtype).gather(1, problem.answer_ids).masked_fill_(~problem.valid, 0)
    loss, grad_k, iterations = pairwise_hinge_cpu(student, problem, margin, mode, max_iter, tol, seed, scheme)
    grad = torch.zeros(student_logits.shape, dtype=dtype, device=student_logits.device)
    grad.scatter_add_(1, problem.answer_ids, grad_k * problem.valid)
    return loss, grad, iterations


def pairwise_loss(student_logits: torch.Tensor, teacher_mc_logits: torch.Tensor,
                  teacher_logits: Optional[torch.Tensor], valid: Optional[torch.Tensor], margin: float,
                  margin_mode: str, lam: Optional[float], top_k: int, max_iter: int, tol: float, seed: int,
                  sinkhorn: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RADI-P per-sample losses [B], their gradient w.r.t. ``student_logits`` [B, N] and the
    Sinkhorn iterations [B] (int64; 0 for the margin modes without Sinkhorn).

    ``valid``: None, [B] lengths or a [B, N] bool mask of the valid answers."""
    with no_autocast(student_logits):
        return pairwise_forward_cpu(student_logits, teacher_mc_logits, teacher_logits, valid, margin, margin_mode,
                                    lam, top_k, max_iter, tol, seed, sinkhorn)


pairwise_loss_op = torch.library.custom_op(OP_NAME, pairwise_loss, mutates_args=())


@pairwise_loss_op.register_fake
def _pairwise_loss_fake(student_logits, teacher_mc_logits, teacher_logits, valid, margin, margin_mode, lam, top_k,
                        max_iter, tol, seed, sinkhorn):
    return fake_outputs(student_logits, teacher_mc_logits, teacher_logits)


# what radi_pairwise_loss calls: the op, or its body as an autograd.Function in plain eager mode
pairwise_loss_call = precomputed_gradient_call(pairwise_loss_op, pairwise_loss, "PairwiseLossCpu")
