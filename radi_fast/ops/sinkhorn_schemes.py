"""What the accelerated Sinkhorn schemes do between half-steps, per sample, on any backend
(docs/sinkhorn.md). Potentials are ``[b, K]`` tensors in log units times ``unit`` (1 for natural
logs, ln 2 for the Triton path's base-2 potentials); ``ok`` marks the entries that take part.

Both keep the fixed point of Algorithm 1: at the fixed point the plain step is the identity, and
so are the relaxed and the extrapolated steps.
"""
from __future__ import annotations

import math

import torch

ANDERSON_MEMORY = 5
RIDGE = 1e-10  # Tikhonov weight of Anderson's least squares, relative to the trace
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
    """Anderson acceleration (type II) of the fixed-point map ``g -> G(F(g))``, memory m.

    From the last m + 1 iterates ``g_k`` and residuals ``r_k = map(g_k) - g_k``, the next iterate
    is ``g + r - (dX + dR) gamma`` with ``gamma`` the least-squares fit of r by the residual
    differences dR (Tikhonov-regularised). A sample whose residual norm grows beyond twice its best
    restarts (its history is dropped: the next step is the plain one). The gauge ``g + c`` (W does
    not depend on it) is fixed by centring g.
    """

    def __init__(self, b: int, K: int, dtype, device, memory: int = ANDERSON_MEMORY):
        self.m = memory
        self.X = torch.zeros(b, memory + 1, K, dtype=dtype, device=device)
        self.R = torch.zeros(b, memory + 1, K, dtype=dtype, device=device)
        self.count = torch.zeros(b, dtype=torch.int64, device=device)
        self.best = torch.full((b,), float("inf"), dtype=dtype, device=device)
        self.eye = torch.eye(memory, dtype=torch.float64, device=device)
        self.slots = torch.arange(memory, device=device)

    def step(self, g: torch.Tensor, g_map: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """The extrapolated iterate after ``g`` (whose map is ``g_map``)."""
        okf = ok.to(g.dtype)
        r = (g_map - g) * okf
        norm = r.norm(dim=1)
        self.count = torch.where(norm > 2 * self.best, torch.zeros_like(self.count), self.count)
        self.best = torch.minimum(self.best, norm)
        self.X = torch.cat([self.X[:, 1:], g[:, None]], dim=1)
        self.R = torch.cat([self.R[:, 1:], r[:, None]], dim=1)
        self.count = (self.count + 1).clamp(max=self.m + 1)
        usable = (self.slots[None, :] >= (self.m + 1 - self.count)[:, None]).to(g.dtype)[:, :, None]
        dX = (self.X[:, 1:] - self.X[:, :-1]) * usable  # [b, m, K]
        dR = (self.R[:, 1:] - self.R[:, :-1]) * usable
        # the normal equations in float64: in fp32 the residual differences near the tolerance are
        # a few ulps apart and the fit would be noise (3x more iterations at lam = 0.03 mean U)
        dR64 = dR.double()
        A = dR64 @ dR64.transpose(1, 2)
        ridge = RIDGE * A.diagonal(dim1=1, dim2=2).sum(1) + torch.finfo(torch.float64).tiny
        gamma = torch.linalg.solve(A + ridge[:, None, None] * self.eye, dR64 @ r.double()[:, :, None])
        gamma = gamma.squeeze(2).to(g.dtype)
        g_next = g + r - ((dX + dR) * gamma[:, :, None]).sum(1)
        centre = (g_next * okf).sum(1, keepdim=True) / okf.sum(1, keepdim=True).clamp(min=1)
        return torch.where(ok, g_next - centre, g_map)


def masked_max_abs(x: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """``max |x|`` over the ``ok`` entries of each row ([b]; 0 for a row without one)."""
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0])
    return torch.where(ok, x.abs(), torch.zeros_like(x)).amax(dim=1)
