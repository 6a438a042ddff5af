"""Algorithm 1 on the CPU path (any device): one chunk of samples, its K x K kernel materialised.

The rank-one parts of the cost fold into the potentials (docs/design.md): the chunk's only K x K
tensor is ``G = 2 <z_i, z_j> / (T lam)``, exponentiated in place when the plain domain is exact to
rounding, else iterated in the log domain. Schemes (docs/sinkhorn.md), all with the same fixed
point, each sample stopping on its own when one plain step moves its potential by at most ``tol``
(``max |T(g) - g|``, the log column-marginal error of the plain iteration ``T = G o F``; for
``anderson`` ``max |F(x) - x|``): either test bounds W's marginal error by ``expm1(tol)``.

* ``plain``: Algorithm 1.
* ``overrelaxed``: ``f <- f + omega (F(g) - f)``, same for g, with a per-sample omega re-derived
  from the observed contraction and a safeguard: a step that does not increase the dual
  objective is replaced by the plain step (which always does) and omega is halved towards 1.
* ``anderson``: Anderson acceleration (type II, memory ``ANDERSON_MEMORY``) of the symmetric
  half-step map ``x -> F(x)`` (the fixed point has ``f = g``) after an exact scale fix,
  restarted when the residual grows; its stopping test is ``max |F(x) - x| <= tol`` and its
  iterations are half-steps / 2.
* ``scaling``: epsilon-scaling: Algorithm 1 loosely solved at each level ``lam * c`` (c halving
  from ``mean(U) / lam`` to 1), potentials warm-started in cost units, then plain iterations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .sinkhorn_schemes import Anderson, Relaxation, iterations_of_half_steps, masked_max_abs

# Elements of the row blocks in which the kernel is built and exponentiated (1 MB in fp32).
CPU_FUSED_BLOCK_ELEMENTS = 1 << 18
# Elements of each [samples, rows, K] temporary of a log-domain half-step (4 MB in fp32).
CPU_ROW_BLOCK_ELEMENTS = 1 << 20
# epsilon-scaling: at each coarse level, iterate until the plain step is below this (natural log
# units), at most this many times
SCALING_LEVEL_TOL = 1e-2
SCALING_ITERS_PER_LEVEL = 10
# Largest cost U/lam for which the plain-domain iteration (matrix-vector products with a
# materialised exp(-U/lam)) is exact to rounding; beyond it the log domain takes over.
PLAIN_DOMAIN_MAX_COST = {torch.float32: 30.0, torch.float64: 300.0}


@dataclass
class SinkhornSolution:
    """Log potentials ``f = log u``, ``g = log v`` [b, K] and the chunk's kernel, kept so the loss
    pass reads ``W_ij = exp(f_i + g_j - U_ij/lam)`` without recomputing it.

    With ``shift_i = s_i / (T lam)``, ``-U_ij/lam = G_ij - shift_i - shift_j``; ``kernel`` is
    ``exp(G)`` (plain domain) or ``G`` (log domain), 0 / -inf off the allowed pairs.
    ``iterations``: [b] int64 iterations each sample ran; ``marginal_error``: [b] L-infinity error
    of W's row and column sums against 1 (None unless asked for).
    """

    f_folded: torch.Tensor
    g_folded: torch.Tensor
    kernel: torch.Tensor
    plain: bool
    shift: torch.Tensor
    iterations: torch.Tensor
    marginal_error: Optional[torch.Tensor] = None

    @property
    def f(self) -> torch.Tensor:
        return self.f_folded + self.shift

    @property
    def g(self) -> torch.Tensor:
        return self.g_folded + self.shift

    def folded(self):
        """The potentials that pair with ``kernel``: ``f - shift``, ``g - shift``, kept as the
        iterations left them (recomputing them from ``f`` would round at the magnitude of the
        shift: at a small lam, errors of many units in the exponent, W entries of 1e13)."""
        return self.f_folded, self.g_folded

    def weights(self, rows: slice, cols: slice, scale: float = 1.0) -> torch.Tensor:
        """``scale * W`` for rows and columns, [b, r, c], a fresh tensor (one allocation), at
        most ``scale``: a doubly stochastic W is in [0, 1], the clamp only removes rounding."""
        f, g = self.folded()
        if self.plain:
            u, v = torch.exp(f[:, rows, None]), torch.exp(g[:, None, cols])
            if scale != 1.0:
                u = u * scale
            return torch.mul(self.kernel[:, rows, cols], u).mul_(v).clamp_max_(scale)
        W = torch.add(self.kernel[:, rows, cols], f[:, rows, None]).add_(g[:, None, cols]).exp_()
        return W.mul_(scale).clamp_max_(scale) if scale != 1.0 else W.clamp_max_(1.0)


def chunks(total: int, size: int, start: int = 0):
    for first in range(start, total, max(1, size)):
        yield slice(first, min(total, first + max(1, size)))


def _row_logsumexp(G: torch.Tensor, h: torch.Tensor, inv_c: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``logsumexp_j(G[b, i, j] / c_b + h[b, j])`` [b, K], in row blocks (no [b, K, K] temporary)."""
    b, K, _ = G.shape
    out = h.new_empty(b, K)
    block = max(1, CPU_ROW_BLOCK_ELEMENTS // max(1, b * K))
    for rows in chunks(K, block):
        logits = G[:, rows] if inv_c is None else G[:, rows] * inv_c[:, None, None]
        out[:, rows] = torch.logsumexp(logits + h[:, None, :], dim=2)
    return out


def build_kernel(points: torch.Tensor, sq: torch.Tensor, inv_lam: torch.Tensor, n_valid: torch.Tensor,
                 out: Optional[torch.Tensor], log_domain: bool):
    """``(G, plain, shift)`` for points [b, K, T]: the folded kernel (exponentiated when ``plain``),
    diagonal and padding filled with 0 (plain) or -inf (log)."""
    b, K, T = points.shape
    dtype = points.dtype
    scale = inv_lam.to(dtype) / T  # 1 / (T lam)
    shift = sq * scale[:, None]  # -U/lam = G - shift_i - shift_j
    zs = points * torch.sqrt(2 * scale)[:, None, None]
    zs_t = zs.transpose(1, 2).contiguous()
    G = points.new_empty(b, K, K) if out is None else out.view(-1)[: b * K * K].view(b, K, K)
    limit = PLAIN_DOMAIN_MAX_COST[dtype]
    # Cauchy-Schwarz: |G_ij| <= 2 sqrt(shift_i shift_j) and U_ij/lam <= 4 max shift. Under that
    # bound the plain domain is known before G exists: each row block is exponentiated while it
    # is still in cache. Otherwise the exact max G and max U/lam bound decide.
    sure_plain = not log_domain and (4 * float(shift.amax()) <= limit if shift.numel() else True)
    if sure_plain:
        rows_per_block = max(1, CPU_FUSED_BLOCK_ELEMENTS // max(1, K))
        for i in range(b):
            for rows in chunks(K, rows_per_block):
                torch.mm(zs[i, rows], zs_t[i], out=G[i, rows]).exp_()
        plain = True
    else:
        torch.bmm(zs, zs_t, out=G)  # out=: ~3x faster than a fresh result on CPU
        plain = False
        if not log_domain and G.numel():
            g_min, g_max = torch.aminmax(G)
            plain = float(g_max) <= limit and 2 * float(shift.amax()) - float(g_min) <= limit
            if plain:
                G.exp_()
    fill = 0.0 if plain else float("-inf")
    G.diagonal(dim1=1, dim2=2).fill_(fill)
    for i in torch.nonzero(n_valid < K).flatten().tolist():  # padding: the tail of each row
        k = int(n_valid[i])
        G[i, k:, :] = fill
        G[i, :, k:] = fill
    return G, plain, shift


class HalfStep:
    """``h -> -log sum_j exp(G_ij / c + h_j)``: the potential of the other side (rows without a
    partner pinned). The kernel is symmetric, so both half-steps are this row reduction."""

    def __init__(self, G: torch.Tensor, plain: bool, row_ok: torch.Tensor, pinned: torch.Tensor):
        self.G, self.plain, self.row_ok, self.pinned = G, plain, row_ok, pinned

    def __call__(self, h: torch.Tensor, inv_c: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.plain:  # row vector x kernel: the fast BLAS layout, batched
            out = torch.bmm(torch.exp(h)[:, None, :], self.G).squeeze(1).log_().neg_()
        else:
            out = _row_logsumexp(self.G, h, inv_c).neg_()
        return torch.where(self.row_ok, out, self.pinned)


def iterate(step: HalfStep, f: torch.Tensor, g: torch.Tensor, active: torch.Tensor, max_iter: int, tol: float,
            scheme: str, levels: Optional[torch.Tensor] = None):
    """Run a scheme from ``(f, g)`` (folded) until every sample is frozen or ``max_iter``;
    returns ``(f, g, iterations [b])``."""
    ok = step.row_ok
    iterations = torch.zeros(f.shape[0], dtype=torch.int64, device=f.device)
    runner: Callable = {"plain": _plain, "overrelaxed": _overrelaxed, "anderson": _anderson,
                        "scaling": _scaling}[scheme]
    return runner(step, f, g, active, max_iter, tol, ok, iterations, levels)


def _freeze(active, delta, tol, iterations):
    iterations += active.to(iterations.dtype)
    return active & (delta > tol)


def _plain(step, f, g, active, max_iter, tol, ok, iterations, levels, cap=None):
    """Algorithm 1; ``cap`` [b]: each sample's own budget (at most ``max_iter``)."""
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        f_new = step(g)
        g_new = step(f_new)
        delta = masked_max_abs(g_new - g, ok)
        keep = active[:, None]
        f, g = torch.where(keep, f_new, f), torch.where(keep, g_new, g)
        active = _freeze(active, delta, tol, iterations)
        if cap is not None:
            active &= iterations < cap
    return f, g, iterations


def _overrelaxed(step, f, g, active, max_iter, tol, ok, iterations, levels):
    relax = Relaxation(f.shape[0], f.dtype, f.device)
    relaxed = torch.zeros_like(active)
    for it in range(max_iter):
        if not bool(active.any()):
            break
        last = it == max_iter - 1
        f_new = relax.step(f, step(g), ok)
        g_plain = step(f_new)
        delta = masked_max_abs(g - g_plain, ok)
        g_new = g_plain if last else relax.step(g, g_plain, ok)  # the last half-step is a plain one
        keep = active[:, None]
        f, g = torch.where(keep, f_new, f), torch.where(keep, g_new, g)
        relaxed |= active & (relax.omega > 1)
        relax.observe(delta, active)
        active = _freeze(active, delta, tol, iterations)
    # a sample that stopped on a relaxed step gets one plain iteration: the pair (F(g), G(F(g))) of
    # every other scheme, whose marginal error is bounded by the last step
    polish = relaxed & (iterations < max_iter)
    if bool(polish.any()):
        f_new = step(g)
        g_new = step(f_new)
        f, g = torch.where(polish[:, None], f_new, f), torch.where(polish[:, None], g_new, g)
        iterations += polish.to(iterations.dtype)
    return f, g, iterations


def _anderson(step, f, g, active, max_iter, tol, ok, iterations, levels):
    """Anderson on the symmetric half-step map ``x -> F(x)`` (``sinkhorn_schemes.Anderson``):
    one half-step per step, at most ``2 max_iter`` of them; a sample stops when
    ``max |F(x) - x| <= tol`` (after the scale fix) and ends on the pair ``(F(x), F(x))``.
    ``iterations`` counts Algorithm 1's iterations of work: half-steps / 2, rounded up."""
    mixer = Anderson(g.shape[0], g.shape[1], g.dtype, g.device)
    x = g
    half_steps = torch.zeros_like(iterations)
    for it in range(2 * max_iter):
        if not bool(active.any()):
            break
        x_next, y, delta = mixer.step(x, step(x), ok)
        done = active & ((delta <= tol) | (it == 2 * max_iter - 1))
        keep = active[:, None]
        f = torch.where(keep, y, f)
        x = torch.where(done[:, None], y, torch.where(keep, x_next, x))
        half_steps += active.to(half_steps.dtype)
        active = active & ~done
    return f, x, iterations + iterations_of_half_steps(half_steps)


def _scaling(step, f, g, active, max_iter, tol, ok, iterations, levels):
    c = levels.clone()  # per sample, >= 1: the current lam / the target lam
    # every sample counts its own iterations against max_iter, coarse levels included, whatever
    # the other samples of the batch need (the Triton path does the same, sync-free)
    while bool((active & (c > 1)).any()):
        coarse = active & (c > 1)
        inv_c = torch.where(coarse, 1 / c, torch.ones_like(c))
        level_active = coarse & (iterations < max_iter)
        for _ in range(SCALING_ITERS_PER_LEVEL):  # solve the level loosely
            if not bool(level_active.any()):
                break
            f_new = step(g, inv_c)
            g_new = step(f_new, inv_c)
            delta = masked_max_abs(g_new - g, ok)
            keep = level_active[:, None]
            f, g = torch.where(keep, f_new, f), torch.where(keep, g_new, g)
            iterations += level_active.to(iterations.dtype)
            level_active &= (delta > SCALING_LEVEL_TOL) & (iterations < max_iter)
        # next level: lam halves; the potentials in cost units (lam f) are kept
        c_next = torch.where(coarse, (c / 2).clamp(min=1), c)
        f, g = f * (c / c_next)[:, None], g * (c / c_next)[:, None]
        c = c_next
    cap = max_iter - iterations
    f, g, more = _plain(step, f, g, active & (cap > 0), int(cap.max()) if cap.numel() else 0, tol, ok,
                        torch.zeros_like(iterations), None, cap)
    return f, g, iterations + more


def marginal_error(step: HalfStep, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """L-infinity error of W's row and column sums against 1, per sample (two half-steps)."""
    ok = step.row_ok
    rows = masked_max_abs(torch.expm1(f - step(g)), ok)
    cols = masked_max_abs(torch.expm1(g - step(f)), ok)
    return torch.maximum(rows, cols)


def coarse_factors(ratio: torch.Tensor) -> torch.Tensor:
    """Where epsilon-scaling starts: ``mean(U) / lam`` per sample, 1 (no coarse level) below 1.01."""
    return torch.where(ratio > 1.01, ratio, torch.ones_like(ratio))


def mean_offdiagonal_uncertainty(points: torch.Tensor, sq: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal U per sample in O(K T): ``sum_ij U_ij = (2 K sum_i s_i - 2 ||sum_i z_i||^2) / T``."""
    T = points.shape[2]
    k = n_valid.to(points.dtype)
    total = (2 * k * sq.sum(1) - 2 * (points.sum(1) ** 2).sum(1)) / T
    return total / (k * (k - 1)).clamp(min=1)


def solve_chunk(points, sq, inv_lam, n_valid, valid, max_iter: int, tol: float, scheme: str = "plain",
                out: Optional[torch.Tensor] = None, with_error: bool = False) -> SinkhornSolution:
    """Algorithm 1 for one chunk of samples (points [b, K, T], their squared norms, ``1 / lam``,
    K_b, validity): the kernel, then the scheme from ``u = v = 1``. ``out``: optional storage of at
    least ``b * K * K`` elements for the kernel (reused across chunks)."""
    levels = None
    if scheme == "scaling":
        levels = coarse_factors(mean_offdiagonal_uncertainty(points, sq, n_valid) * inv_lam.to(points.dtype))
    # Anderson's extrapolated iterates may leave the plain domain's range (exp(x) overflows where the
    # log-sum-exp does not; the Triton path is log-domain throughout): it runs in the log domain
    log_domain = scheme == "anderson" or (levels is not None and bool((levels > 1).any()))
    G, plain, shift = build_kernel(points, sq, inv_lam, n_valid, out, log_domain=log_domain)
    has_partner = n_valid >= 2
    pinned = -shift  # rows without a partner keep f = g = 0 (folded: -shift)
    step = HalfStep(G, plain, valid & has_partner[:, None], pinned)
    f, g, iterations = iterate(step, pinned.clone(), pinned.clone(), has_partner.clone(), max_iter, tol, scheme,
                               levels)
    error = marginal_error(step, f, g) if with_error else None
    return SinkhornSolution(f_folded=f, g_folded=g, kernel=G, plain=plain, shift=shift, iterations=iterations,
                            marginal_error=error)
