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
from .autograd import no_autocast, register_precomputed_gradient
from .teacher import compute_dtype, negligible_uncertainty, teacher_top_k, tie_groups

# Elements of the materialised K x K kernel of a chunk of samples (32 MB in fp32): samples go
# through Sinkhorn in chunks that fit (at least one sample per chunk).
CPU_BLOCK_ELEMENTS = 1 << 23
# Elements of each [samples, rows, K] temporary of the hinge pass (4 MB in fp32).
CPU_ROW_BLOCK_ELEMENTS = 1 << 20
# Elements of the row blocks in which the kernel is built and exponentiated (1 MB in fp32).
CPU_FUSED_BLOCK_ELEMENTS = 1 << 18
# Largest cost U/lam for which the plain-domain Sinkhorn (matrix-vector products with a
# materialised exp(-U/lam)) is exact to rounding; beyond it the log domain takes over.
PLAIN_DOMAIN_MAX_COST = {torch.float32: 30.0, torch.float64: 300.0}
OP_NAME = "radi_fast::pairwise_loss_cpu"


# ----------------------------------------------------------------------------- preparation
@dataclass
class PairwiseProblem:
    """One batch of teacher-side quantities on the top-k answers, padded to ``K = max_b K_b``.

    points: centred MC logits ``z`` [B, K, T] (0 on padding); sq: ``||z_i||^2`` [B, K];
    teacher: teacher scores [B, K]; valid: [B, K] bool; answer_ids: [B, K] column ids in the
    student's [B, N]; n_valid: [B] K_b; lam: [B]; inv_scale: ``1 / lam_b`` [B].
    """

    points: torch.Tensor
    sq: torch.Tensor
    teacher: torch.Tensor
    valid: torch.Tensor
    answer_ids: torch.Tensor
    n_valid: torch.Tensor
    lam: torch.Tensor
    inv_scale: torch.Tensor

    @property
    def T(self) -> int:
        return self.points.shape[2]


def auto_lam_from_points(points: torch.Tensor, sq: torch.Tensor, n_valid: torch.Tensor,
                         logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal U per sample in O(K T): ``sum_ij U_ij = (2 K sum_i s_i - 2 ||sum_i z_i||^2) / T``.

    A mean at the level of rounding noise (identical MC passes) counts as no uncertainty: lam = 1.
    """
    T = points.shape[2]
    k = n_valid.to(points.dtype)
    total = (2 * k * sq.sum(1) - 2 * (points.sum(1) ** 2).sum(1)) / T
    mean_off = total / (k * (k - 1)).clamp(min=1)
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
    points = (gathered - gathered.mean(dim=1, keepdim=True)).transpose(1, 2).contiguous()
    points = points * valid[:, :, None]
    sq = (points * points).sum(-1)
    logit_scale = (gathered * valid[:, None, :]).abs().amax(dim=(1, 2)) if gathered.numel() else sq.new_zeros(B)
    lam_b = auto_lam_from_points(points, sq, n_valid, logit_scale) if lam is None else torch.full((B,), lam, dtype=dtype, device=mc.device)
    return PairwiseProblem(points=points, sq=sq, teacher=teacher.gather(1, order), valid=valid, answer_ids=order,
                           n_valid=n_valid, lam=lam_b, inv_scale=1.0 / lam_b)


# ----------------------------------------------------------------------------- K x K blocks
def uncertainty_block(p: PairwiseProblem, s: slice, rows: slice, cols: slice = slice(None)) -> torch.Tensor:
    """``U[b, i, j] = (s_i + s_j - 2 <z_i, z_j>) / T`` for samples ``s``, rows, columns: [b, r, c].

    Clamped at 0: the expansion can go slightly negative by rounding for close answers. One
    [b, r, c] allocation: the row norms broadcast into ``baddbmm``, the rest in place.
    """
    U = torch.baddbmm(p.sq[s, rows, None], p.points[s, rows], p.points[s, cols].transpose(1, 2), alpha=-2)
    return U.add_(p.sq[s, None, cols]).clamp_min_(0).div_(p.T)


def chunks(total: int, size: int, start: int = 0):
    for first in range(start, total, max(1, size)):
        yield slice(first, min(total, first + max(1, size)))


@dataclass
class SinkhornSolution:
    """Log potentials f = log u, g = log v [b, K] and the chunk's materialised kernel, kept so the
    loss pass reads ``W_ij = exp(f_i + g_j - U_ij/lam)`` instead of recomputing it.

    The kernel is stored with its rank-one part folded out (docs/design.md): with
    ``shift_i = s_i / (T lam)``, ``-U_ij/lam = G_ij - shift_i - shift_j`` where
    ``G_ij = 2 <z_i, z_j> / (T lam)``. ``kernel`` is ``exp(G)`` (plain domain) or ``G`` (log
    domain), 0 / -inf off the allowed pairs, so ``W_ij = kernel_ij * exp(f_i - shift_i) *
    exp(g_j - shift_j)`` (plain). ``shift`` None means no folding (``kernel`` is ``exp(-U/lam)``
    or ``-U/lam``)."""

    f: torch.Tensor
    g: torch.Tensor
    kernel: torch.Tensor
    plain: bool
    shift: Optional[torch.Tensor] = None

    def folded(self):
        """The potentials that pair with ``kernel``: ``f - shift``, ``g - shift``."""
        if self.shift is None:
            return self.f, self.g
        return self.f - self.shift, self.g - self.shift

    def weights(self, rows: slice, cols: slice, scale: float = 1.0) -> torch.Tensor:
        """``scale * W`` for rows and columns, [b, r, c], a fresh tensor (one allocation)."""
        f, g = self.folded()
        if self.plain:
            u, v = torch.exp(f[:, rows, None]), torch.exp(g[:, None, cols])
            if scale != 1.0:
                u = u * scale
            return torch.mul(self.kernel[:, rows, cols], u).mul_(v)
        W = torch.add(self.kernel[:, rows, cols], f[:, rows, None]).add_(g[:, None, cols]).exp_()
        return W.mul_(scale) if scale != 1.0 else W


def _row_logsumexp(G: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``logsumexp_j(G[b, i, j] + h[b, j])`` [b, K], in row blocks so no [b, K, K] temporary."""
    b, K, _ = G.shape
    out = h.new_empty(b, K)
    block = max(1, CPU_ROW_BLOCK_ELEMENTS // max(1, b * K))
    for rows in chunks(K, block):
        out[:, rows] = torch.logsumexp(G[:, rows] + h[:, None, :], dim=2)
    return out


def sinkhorn_log_potentials_cpu(p: PairwiseProblem, max_iter: int, tol: float, s: slice,
                                out: Optional[torch.Tensor] = None) -> SinkhornSolution:
    """Algorithm 1 for the samples ``s`` (a chunk whose K x K kernel fits the memory budget).

    The rank-one parts of the cost fold into the potentials (docs/design.md): the chunk's only
    K x K tensor is ``G = 2 <z_i, z_j> / (T lam)`` (rank-T products), exponentiated in place for
    the plain domain, with the diagonal and the padding (a suffix of each row) filled in place.
    When the cost and G are small enough (``max G`` and the bound ``2 max shift - min G`` of
    ``U/lam`` within ``PLAIN_DOMAIN_MAX_COST``) the plain-domain iteration (two mat-vecs per step,
    no exp) is exact to rounding; otherwise the log-domain iteration (row-blocked logsumexp)
    avoids underflow.
    The kernel is symmetric, so both half-steps are row reductions. Converged samples are
    frozen, so each sample stops on its own test like the reference. ``out``: optional storage
    of at least ``b * K * K`` elements for the kernel (reused across chunks: no fresh pages).
    """
    pts = p.points[s]
    b, K, T = pts.shape
    dtype = pts.dtype
    scale = p.inv_scale[s].to(dtype) / T  # 1 / (T lam)
    shift = p.sq[s] * scale[:, None]  # -U/lam = G - shift_i - shift_j
    zs = pts * torch.sqrt(2 * scale)[:, None, None]
    zs_t = zs.transpose(1, 2).contiguous()
    G = pts.new_empty(b, K, K) if out is None else out.view(-1)[: b * K * K].view(b, K, K)
    limit = PLAIN_DOMAIN_MAX_COST[dtype]
    # Cauchy-Schwarz: |G_ij| <= 2 sqrt(shift_i shift_j) and U_ij/lam <= 4 max shift. Under that
    # bound the plain domain is known before G exists: each row block is exponentiated while it
    # is still in cache. Otherwise the exact max G and max U/lam bound decide.
    sure_plain = 4 * float(shift.amax()) <= limit if shift.numel() else True
    if sure_plain:
        rows_per_block = max(1, CPU_FUSED_BLOCK_ELEMENTS // max(1, K))
        for i in range(b):
            for rows in chunks(K, rows_per_block):
                torch.mm(zs[i, rows], zs_t[i], out=G[i, rows]).exp_()
        plain = True
    else:
        torch.bmm(zs, zs_t, out=G)  # out=: ~3x faster than a fresh result on CPU
        g_min, g_max = torch.aminmax(G)
        plain = float(g_max) <= limit and 2 * float(shift.amax()) - float(g_min) <= limit
        if plain:
            G.exp_()
    fill = 0.0 if plain else float("-inf")
    G.diagonal(dim1=1, dim2=2).fill_(fill)
    n_valid = p.n_valid[s]
    for i in torch.nonzero(n_valid < K).flatten().tolist():  # padding: the tail of each row
        k = int(n_valid[i])
        G[i, k:, :] = fill
        G[i, :, k:] = fill
    has_partner = n_valid >= 2
    row_ok = p.valid[s] & has_partner[:, None]
    pinned = -shift  # rows without a partner keep f = g = 0 (folded: -shift)
    f = pinned.clone()
    g = pinned.clone()
    active = has_partner.clone()
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        # rows without a partner (padding, K_b < 2) would give log(0): pin them before use
        if plain:  # row vector x kernel (= kernel x column, symmetric): the fast BLAS layout, also batched
            f_new = torch.bmm(torch.exp(g)[:, None, :], G).squeeze(1).log_().neg_()
            f_new = torch.where(row_ok, f_new, pinned)
            g_new = torch.bmm(torch.exp(f_new)[:, None, :], G).squeeze(1).log_().neg_()
        else:  # f_i = -logsumexp_j(g_j + G_ij)
            f_new = torch.where(row_ok, _row_logsumexp(G, g).neg_(), pinned)
            g_new = _row_logsumexp(G, f_new).neg_()
        g_new = torch.where(row_ok, g_new, pinned)
        delta = (g_new - g).abs().amax(dim=1)
        f = torch.where(active[:, None], f_new, f)
        g = torch.where(active[:, None], g_new, g)
        active = active & (delta > tol)
    return SinkhornSolution(f=f + shift, g=g + shift, kernel=G, plain=plain, shift=shift)


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
                       tol: float, seed: int):
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
    n_valid = p.n_valid.to(student.device)
    _, tie_end, n_pairs = tie_groups(p.teacher, p.valid, n_valid)
    n_pairs = n_pairs.to(student.dtype)
    col_ids = torch.arange(K, device=student.device)
    # rows whose ordered pairs are exactly j > i (no tie with the next answer, valid, no padding)
    plain_row = (tie_end == col_ids[None, :] + 1) & p.valid & (n_valid[:, None] == K)
    sample_chunk = max(1, CPU_BLOCK_ELEMENTS // max(1, K * K))
    workspace = student.new_empty(min(B, sample_chunk) * K * K) if mode == "ot" and B else None
    for s in chunks(B, sample_chunk):
        solution = sinkhorn_log_potentials_cpu(p, max_iter, tol, s, out=workspace) if mode == "ot" else None
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
    return loss * scale, grad * scale[:, None]




def solve_sinkhorn(p: PairwiseProblem, max_iter: int, tol: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Natural-log potentials ``(f, g)`` [B, K] of the whole batch, chunked as the loss chunks it."""
    B, K = p.points.shape[0], p.points.shape[1]
    chunk = max(1, CPU_BLOCK_ELEMENTS // max(1, K * K))
    workspace = p.points.new_empty(min(B, chunk) * K * K) if B else None
    fs, gs = [], []
    for s in chunks(B, chunk):
        solution = sinkhorn_log_potentials_cpu(p, max_iter, tol, s, out=workspace)
        fs.append(solution.f)
        gs.append(solution.g)
    if not fs:
        return p.sq.clone(), p.sq.clone()
    return torch.cat(fs), torch.cat(gs)


def uncertainty_dense(mc_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 5 densely, [B, T, K] -> U [B, K, K] (diagonal 0), from the centred points: one
    [B, K, K] allocation (``s_i - 2 <z_i, z_j>``, then ``+ s_j``, clamp, ``/ T`` in place)."""
    mc = mc_logits.to(compute_dtype(mc_logits))
    z = (mc - mc.mean(dim=1, keepdim=True)).transpose(1, 2).contiguous()
    sq = (z * z).sum(-1)
    B, K, T = z.shape
    U = torch.baddbmm(sq[:, :, None], z, z.transpose(1, 2), alpha=-2, out=z.new_empty(B, K, K))
    U.add_(sq[:, None, :]).clamp_min_(0).div_(T)
    U.diagonal(dim1=1, dim2=2).zero_()
    return U


def sinkhorn_weights_dense(mc_logits: torch.Tensor, lam: Optional[float], max_iter: int, tol: float) -> torch.Tensor:
    """Algorithm 1's W [B, K, K] on every answer of ``mc_logits`` [B, T, K] in their own order
    (diagonal 0); ``lam`` None is "auto"."""
    B, _, K = mc_logits.shape
    tied = torch.zeros(B, K, dtype=mc_logits.dtype, device=mc_logits.device)  # stable sort: identity order
    p = prepare_pairwise(mc_logits, tied, K, lam, None)
    W = sinkhorn_log_potentials_cpu(p, max_iter, tol, slice(None)).weights(slice(None), slice(None))
    off_diagonal = ~torch.eye(K, dtype=torch.bool, device=W.device)
    return torch.where(off_diagonal, W, torch.zeros((), dtype=W.dtype))


# ----------------------------------------------------------------------------- torch.library op
def pairwise_forward_cpu(student_logits, teacher_mc_logits, teacher_logits, valid, margin: float, mode: str,
                         lam: Optional[float], top_k: int, max_iter: int, tol: float,
                         seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(per-sample losses [B], gradient of each sample's loss w.r.t. ``student_logits`` [B, N])."""
    problem = prepare_pairwise(teacher_mc_logits, teacher_logits, top_k, lam, valid)
    dtype = problem.points.dtype
    student = student_logits.detach().to(dtype).gather(1, problem.answer_ids).masked_fill_(~problem.valid, 0)
    loss, grad_k = pairwise_hinge_cpu(student, problem, margin, mode, max_iter, tol, seed)
    grad = torch.zeros(student_logits.shape, dtype=dtype, device=student_logits.device)
    grad.scatter_add_(1, problem.answer_ids, grad_k * problem.valid)
    return loss, grad


@torch.library.custom_op(OP_NAME, mutates_args=())
def pairwise_loss_op(student_logits: torch.Tensor, teacher_mc_logits: torch.Tensor,
                     teacher_logits: Optional[torch.Tensor], valid: Optional[torch.Tensor], margin: float,
                     margin_mode: str, lam: Optional[float], top_k: int, max_iter: int, tol: float,
                     seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """RADI-P per-sample losses [B] and their gradient w.r.t. ``student_logits`` [B, N].

    ``valid``: None, [B] lengths or a [B, N] bool mask of the valid answers."""
    with no_autocast(student_logits):
        return pairwise_forward_cpu(student_logits, teacher_mc_logits, teacher_logits, valid, margin, margin_mode,
                                    lam, top_k, max_iter, tol, seed)


@pairwise_loss_op.register_fake
def _pairwise_loss_fake(student_logits, teacher_mc_logits, teacher_logits, valid, margin, margin_mode, lam, top_k,
                        max_iter, tol, seed):
    dtype = compute_dtype(teacher_mc_logits, teacher_logits)
    B, N = student_logits.shape
    return student_logits.new_empty((B,), dtype=dtype), student_logits.new_empty((B, N), dtype=dtype)


register_precomputed_gradient(pairwise_loss_op)
