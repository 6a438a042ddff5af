"""Launchers of the accelerated Sinkhorn schemes' kernels (``kernels/sinkhorn_accel.py``): the
state of ``sinkhorn_schemes.Relaxation`` / ``Anderson`` as device tensors, one launch per
half-step, no host sync.

``p`` is the Triton path's problem (``pairwise_triton.TritonProblem``: Z, hs, n_valid, dtype);
potentials are its base-2 ``F``, ``G`` [B, K].
"""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels import sinkhorn_accel
from .direct_launch import DirectLaunch, pointer_key
from .sinkhorn_schemes import ANDERSON_MEMORY, LN2, OMEGA_MAX, RIDGE, RIDGE_RESIDUAL, Anderson, Relaxation
from .triton_config import compute_tl_dtype

BLOCK = 256  # answers per step of the per-sample loops
# the Anderson kernel's loops hold [history, block] tiles in fp64 (its normal equations): 128
# answers on 8 warps compile without spills on sm_90 (Triton 3.9: 174 registers; 3.6: 255), 256 on
# 4 warps spilled 1904 bytes (tests/test_triton_compile.py)
ANDERSON_BLOCK, ANDERSON_WARPS = 128, 8


def history_rows(memory: int) -> int:
    """Rows of the Anderson kernel's history tiles: a power of two above the memory."""
    return 1 << max(memory, 1).bit_length()


def _launch_meta(p) -> dict:
    """The constexprs every launch of both kernels shares."""
    return dict(T=p.T, TP=p.zb.shape[2], SPLIT=p.split, COMPUTE=compute_tl_dtype(p.dtype), BLOCK=BLOCK)


class RelaxationLauncher:
    """Over-relaxation with the Lyapunov safeguard and the adaptive omega, on the device."""

    def __init__(self, p, tol_t: torch.Tensor, direct: bool = False):
        B, device, dtype = p.hs.shape[0], p.hs.device, p.dtype
        self.p, self.tol_t = p, tol_t
        meta = _launch_meta(p)
        # direct: relaunch the compiled kernel without Triton's JIT dispatch (ops/direct_launch.py)
        self.launch = DirectLaunch(sinkhorn_accel.sinkhorn_relax_kernel, (B,), dict(meta, num_warps=4), enabled=direct)
        start = Relaxation(B, dtype, device)  # one definition of the initial state; updated in place
        self.omega, self.previous, self.last_ratio, self.rho = start.omega, start.previous, start.last_ratio, start.rho
        self.rejected = start.rejected.to(torch.int32)
        self.relaxed = torch.zeros(B, dtype=torch.int32, device=device)
        self.omega_max = torch.full((1,), OMEGA_MAX, dtype=dtype, device=device)
        self.before = torch.empty_like(p.hs)

    def save(self, pot: torch.Tensor) -> None:
        """Keep the potential before its plain half-step."""
        self.before.copy_(pot)

    def after_half_step(self, side: int, pot, prev, nxt, step: bool, other: Optional[torch.Tensor] = None,
                        rng: Optional[torch.Tensor] = None) -> None:
        """Relax the half-step just taken (when ``step``); after the G side, adapt omega. ``rng``
        [B, 2] (with ``other``, the other potential): the symmetric half-step's record of the
        range of F - G, rewritten where the step moves ``pot``."""
        p = self.p
        other = pot if other is None else other
        rng_arg = self.omega_max if rng is None else rng
        views = (prev, nxt, rng_arg)  # rows of buffers: their alignment varies with the row
        self.launch((side, step, rng is None, id(pot), id(other)) + pointer_key(*views), (pot, other), (
            p.zb, p.zs, p.hs, p.n_valid, self.before, pot, other, prev, nxt, self.tol_t, self.omega, self.previous,
            self.last_ratio, self.rho, self.rejected, self.relaxed, self.omega_max, rng_arg, p.hs.shape[1], p.padded),
            dict(SIDE=side, STEP=step, OBSERVE=side == 1, RECORD_RANGE=rng is not None))


class AndersonLauncher:
    """Anderson acceleration (memory ``ANDERSON_MEMORY``) of the symmetric half-step map
    ``x -> F(x)`` on the device: the iterate lives in G (the q lane), its half-step in F."""

    def __init__(self, p, tol_t: torch.Tensor, memory: int = ANDERSON_MEMORY, direct: bool = False):
        B, K = p.hs.shape
        device, dtype = p.hs.device, p.dtype
        self.p, self.tol_t, self.m = p, tol_t, memory
        meta = _launch_meta(p)
        self.launch = DirectLaunch(sinkhorn_accel.sinkhorn_anderson_kernel, (B,),
                                   dict(meta, BLOCK=ANDERSON_BLOCK, M=memory, MP=history_rows(memory),
                                        num_warps=ANDERSON_WARPS), enabled=direct)
        start = Anderson(B, K, dtype, device, memory, unit=LN2)  # the initial state has one definition
        self.X, self.R, self.count, self.best = start.X, start.R, start.count, start.best
        # (torch.tensor from host data would be a synchronous copy on CUDA)
        self.ridge = torch.full((2,), RIDGE, dtype=torch.float64, device=device)
        self.ridge[1] = RIDGE_RESIDUAL
        self.steps = 0

    def step(self, G: torch.Tensor, F: torch.Tensor, prev, nxt, last: bool = False,
             rng: Optional[torch.Tensor] = None) -> None:
        """For every active sample (``prev > tol``): ``nxt`` = its residual's max (nats); G = the
        extrapolated iterate, or, once converged or when ``last``, F = G = F(x) - c. ``rng`` [B, 2]:
        also written with the range of F - G left (the next symmetric half-step's shift)."""
        p = self.p
        head = (self.steps + 1) % (self.m + 1)  # the oldest slot once this step's entry is written
        rng_arg = prev if rng is None else rng
        views = (prev, nxt, rng_arg)  # rows of buffers: their alignment varies with the row
        self.launch((rng is None, id(G), id(F)) + pointer_key(*views), (G, F), (
            p.zb, p.zs, p.hs, p.n_valid, G, F, prev, nxt, self.tol_t, self.X, self.R, self.count, self.best,
            self.ridge, rng_arg, p.hs.shape[1], p.padded, head, int(last)), dict(RECORD_RANGE=rng is not None))
        self.steps += 1
