"""What the accelerated Sinkhorn schemes do between half-steps, per sample, on any backend
(docs/sinkhorn.md). Potentials are ``[b, K]`` tensors in log units times ``unit`` (1 for natural
logs, ln 2 for the Triton path's base-2 potentials); ``ok`` marks the entries that take part.

Both keep the fixed point of Algorithm 1: at the fixed point the plain step is the identity, and
so are the relaxed and the extrapolated steps.
"""
from __future__ import annotations

import math

import torch

# Anderson's memory: 12 past steps (at lam = 0.03 x mean U, K = 1000: 8 steps 76 iterations, 12
# steps 44; 20 steps 36; bench/sinkhorn_iterations.py)
ANDERSON_MEMORY = 12
RIDGE = 1e-10  # Tikhonov weight of Anderson's least squares, relative to the trace
RIDGE_RESIDUAL = 1e-9  # and relative to the residual's squared norm (see Anderson)
OMEGA_MAX = 1.95
LN2 = math.log(2.0)


class Relaxation:
    """Over-relaxation ``x <- x + omega (x_plain - x)`` with a safeguard and an adaptive omega.

    Safeguard: the dual objective ``sum f + sum g - sum_ij W_ij`` (concave; Algorithm 1's
    half-steps maximise it exactly) must not decrease; a relaxed half-step that would decrease it
    is replaced by the plain one. Omega: plain iterations (omega = 1) until two successive
    contraction ratios of the plain step sizes agree to 1%; that ratio is the plain rate rho, and
    omega becomes SOR's optimum ``2 / (1 + sqrt(1 - rho))`` (at most ``OMEGA_MAX``). A rejected
    step, or a relaxed iteration that contracts no faster than rho, sends omega back to 1 and
    rho is estimated again.
    """

    def __init__(self, b: int, dtype, device, unit: float = 1.0):
        self.omega = torch.ones(b, dtype=dtype, device=device)
        self.previous = torch.full((b,), float("inf"), dtype=dtype, device=device)
        self.last_ratio = torch.full((b,), float("nan"), dtype=dtype, device=device)
        self.rho = torch.zeros(b, dtype=dtype, device=device)
        self.rejected = torch.zeros(b, dtype=torch.bool, device=device)
        self.unit = unit

    def step(self, x: torch.Tensor, x_plain: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """The relaxed potential where its dual gain is >= 0, else the plain one."""
        L = (x - x_plain) * self.unit
        w = self.omega[:, None]
        gain = torch.where(ok, torch.exp(L) - torch.exp((1 - w) * L) - w * L, torch.zeros_like(L)).sum(dim=1)
        accepted = (self.omega <= 1) | (gain >= 0)  # NaN (an overflow) is rejected
        self.rejected |= ~accepted
        return torch.where(accepted[:, None], x + w * (x_plain - x), x_plain)

    def observe(self, delta: torch.Tensor, active: torch.Tensor) -> None:
        """End of an iteration with plain step size ``delta`` [b]: adapt omega."""
        ratio = delta / self.previous
        plain = self.omega <= 1
        stable = plain & active & ((ratio - self.last_ratio).abs() <= 0.01 * ratio) & (ratio < 1) & (delta > 0)
        self.rho = torch.where(stable, ratio, self.rho)
        optimum = (2 / (1 + torch.sqrt((1 - self.rho).clamp(min=1e-12)))).clamp(1, OMEGA_MAX)
        omega = torch.where(stable, optimum, self.omega)
        worse = ~plain & active & (ratio >= self.rho)
        self.omega = torch.where(worse | (self.rejected & active), torch.ones_like(omega), omega)
        self.last_ratio = torch.where(active & plain, ratio, torch.where(active, torch.nan, self.last_ratio))
        self.previous = torch.where(active, delta, self.previous)
        self.rejected = torch.zeros_like(self.rejected)


class Anderson:
    """Anderson acceleration (type II, memory m) of the half-step map ``x -> F(x)`` of the
    symmetric problem (the kernel is symmetric and both marginals are ones, so Algorithm 1's fixed
    point has ``f = g = x`` with ``x = F(x)``; docs/sinkhorn.md).

    One step takes the iterate ``x`` and its half-step ``y = F(x)``. First the exact scale fix:
    ``F(x + c) = F(x) - c`` for a constant c, so ``(x + c, y - c)`` costs nothing; c makes W's
    total mass match the marginals' (``mean exp(x + c - F(x + c)) = 1``), which removes the
    residual's one mode that the half-step map flips rather than contracts. Then, from the last
    m + 1 iterates ``x_k`` and residuals ``r_k = y_k - x_k``, the next iterate is
    ``x + r - (dX + dR) gamma`` with ``gamma`` the least-squares fit of r by the residual
    differences dR (in float64, Tikhonov-regularised relative to the fit's trace and to ``|r|^2``:
    the second keeps gamma small where the residual barely changes from step to step, a drift
    that the half-step map does not contract, where the fit would otherwise extrapolate by 1e13
    and the iterate lose every digit). A sample whose residual norm grows beyond
    twice its best since the last restart restarts (its history is dropped: the next step is
    the plain one).
    Potentials are in log units times ``unit`` (ln 2 for the Triton path's base-2 ones).
    """

    def __init__(self, b: int, K: int, dtype, device, memory: int = ANDERSON_MEMORY, unit: float = 1.0):
        self.m = memory
        self.unit = unit
        self.X = torch.zeros(b, memory + 1, K, dtype=dtype, device=device)
        self.R = torch.zeros(b, memory + 1, K, dtype=dtype, device=device)
        self.count = torch.zeros(b, dtype=torch.int64, device=device)
        self.best = torch.full((b,), float("inf"), dtype=dtype, device=device)
        self.eye = torch.eye(memory, dtype=torch.float64, device=device)
        self.slots = torch.arange(memory, device=device)

    def scale_fix(self, x: torch.Tensor, y: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """``c`` [b] with ``mean_ok exp(unit (x + c - (y - c))) = 1`` (0 for a sample without rows)."""
        d = torch.where(ok, (x - y) * self.unit, torch.full_like(x, float("-inf")))
        n = ok.sum(1).clamp(min=1).to(x.dtype)
        lse = torch.logsumexp(d, dim=1) - torch.log(n)
        return torch.where(ok.any(1), -0.5 * lse / self.unit, torch.zeros_like(lse))

    def step(self, x: torch.Tensor, y: torch.Tensor, ok: torch.Tensor):
        """``(x_next, y_fixed, delta)``: the extrapolated iterate after ``x`` (whose half-step is
        ``y``), the scale-fixed half-step ``y - c`` (the converged pair is ``(y - c, y - c)``) and
        the residual's ``max |.|`` in natural-log units [b]."""
        c = self.scale_fix(x, y, ok)[:, None]
        okf = ok.to(x.dtype)
        x, y = torch.where(ok, x + c, x), torch.where(ok, y - c, y)
        r = (y - x) * okf
        delta = masked_max_abs(r, ok) * self.unit
        norm = r.norm(dim=1)
        restart = norm > 2 * self.best
        self.count = torch.where(restart, torch.zeros_like(self.count), self.count)
        self.best = torch.where(restart, norm, torch.minimum(self.best, norm))
        self.X = torch.cat([self.X[:, 1:], x[:, None]], dim=1)
        self.R = torch.cat([self.R[:, 1:], r[:, None]], dim=1)
        self.count = (self.count + 1).clamp(max=self.m + 1)
        usable = (self.slots[None, :] >= (self.m + 1 - self.count)[:, None]).to(x.dtype)[:, :, None]
        dX = (self.X[:, 1:] - self.X[:, :-1]) * usable  # [b, m, K]
        dR = (self.R[:, 1:] - self.R[:, :-1]) * usable
        # the normal equations in float64: in fp32 the residual differences near the tolerance are
        # a few ulps apart and the fit would be noise
        dR64 = dR.double()
        A = dR64 @ dR64.transpose(1, 2)
        ridge = (RIDGE * A.diagonal(dim1=1, dim2=2).sum(1) + RIDGE_RESIDUAL * (r.double() ** 2).sum(1)
                 + torch.finfo(torch.float64).tiny)
        gamma = torch.linalg.solve(A + ridge[:, None, None] * self.eye, dR64 @ r.double()[:, :, None])
        gamma = gamma.squeeze(2).to(x.dtype)
        x_next = x + r - ((dX + dR) * gamma[:, :, None]).sum(1)
        return torch.where(ok, x_next, y), y, delta


def iterations_of_half_steps(half_steps):
    """Anderson's count in Algorithm 1's iterations of work: half-steps / 2, rounded up."""
    return (half_steps + 1) // 2


def masked_max_abs(x: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """``max |x|`` over the ``ok`` entries of each row ([b]; 0 for a row without one)."""
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0])
    return torch.where(ok, x.abs(), torch.zeros_like(x)).amax(dim=1)
