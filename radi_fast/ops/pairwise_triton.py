"""RADI-P on the Triton kernels of ``kernels/``: launchers and the op
``torch.ops.radi_fast.pairwise_loss_triton`` (same contract as ``pairwise_loss_cpu``).

One call (docs/triton.md): teacher top-k and tie groups (PyTorch, no host sync), the statistics
kernels (lam, augmented points Z), Sinkhorn (row sums + update per half-step, per-sample
freezing on the device), the loss kernel (eq. 4 and the gradient counts), the scatter to [B, N].
CUDA tensors run the compiled kernels; CPU tensors need ``TRITON_INTERPRET=1`` set before
radi_fast is imported (the Triton interpreter: how the tests run without a GPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .._backend import triton_interpret
from .._constants import UNCERTAINTY_EPS
from .._random import row_hashes
from ..kernels import margin_ranking, pairwise_stats, sinkhorn
from .autograd import fake_outputs, no_autocast, precomputed_gradient_call
from .direct_launch import DirectLaunch
from .sinkhorn_cpu import SCALING_ITERS_PER_LEVEL, SCALING_LEVEL_TOL, coarse_factors
from .sinkhorn_accel_triton import AndersonLauncher, RelaxationLauncher
from .sinkhorn_schemes import LN2, iterations_of_half_steps
from .teacher import MAX_COST, compute_dtype, negligible_noise, teacher_top_k
from .triton_config import (TritonConfig, compute_tl_dtype, default_config, half_step_maxnreg, padded_answers, point_lanes,
                            resolve_split, symmetric_maxnreg, triton_cdiv)

OP_NAME = "radi_fast::pairwise_loss_triton"
PAD_LOGIT = -1e30  # kernels/common.py's padding logit
MODE_IDS = {"ot": 0, "uniform": 1, "random": 2, "uncertainty": 3}


def check_device(t: torch.Tensor) -> None:
    """The Triton path runs CUDA tensors, or CPU tensors under the interpreter."""
    if t.device.type != "cuda" and not triton_interpret():
        raise RuntimeError(
            "radi_fast's Triton backend runs on CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
            "(the Triton interpreter) before importing radi_fast, or use backend='torch'")


# ----------------------------------------------------------------------------- stages
@dataclass
class TritonProblem:
    """Teacher-side quantities on the top-k answers (``K = max_b K_b``), compute dtype.

    ``K = min(top_k, N)`` (known without a host sync; samples with fewer valid answers are
    padded). order: [B, K] answer ids in teacher order; valid: [B, K]; n_valid: [B] int64 K_b;
    zb, zs: [B, KP, TP] augmented points ``[y, p, q, 1]`` (fp32: ``Z = zb + zs`` split for
    3xTF32; fp64: ``zs is zb``), p and q updated in place by Sinkhorn; hs: [B, K]; lam: [B] in
    the caller's units; lam_k: [B] in the scaled units the kernels use (floored and capped,
    ops/teacher.py ``kernel_lam``); unit: [B] the caller's U per scaled U; tie_lo, tie_hi:
    [B, KP] int32, answer i's teacher tie group ``[tie_lo_i, tie_hi_i)``; n_pairs: [B] |R_p|; mc:
    [B, T, K] the MC logits of the top-k answers in teacher order, scaled per sample by a power
    of two so the largest |logit| is in [0.5, 1) (exact; 0 on padding), read by the statistics
    kernels to rebuild Z at another lam; yt: [B, TP, KP] the
    points y lane-major (only for the "uncertainty" margins, else None); student: [B, KP] the
    student's scores in teacher order, -inf past each K_b (when :func:`prepare_triton` was given
    them, else None: :func:`sorted_student`).
    """

    order: torch.Tensor
    n_valid: torch.Tensor
    zb: torch.Tensor
    zs: torch.Tensor
    hs: torch.Tensor
    lam: torch.Tensor
    lam_k: torch.Tensor
    unit: torch.Tensor
    tie_lo: torch.Tensor
    tie_hi: torch.Tensor
    n_pairs: torch.Tensor
    T: int
    dtype: torch.dtype
    mc: torch.Tensor
    yt: Optional[torch.Tensor] = None
    student: Optional[torch.Tensor] = None

    @property
    def valid(self) -> torch.Tensor:
        """[B, K] bool: the valid answers (a prefix of each row), built on first use: the kernels
        read ``n_valid``, and the defaults call never needs the mask (two PyTorch ops)."""
        if getattr(self, "_valid", None) is None:
            self._valid = torch.arange(self.order.shape[1], device=self.order.device)[None, :] < self.n_valid[:, None]
        return self._valid

    @property
    def split(self) -> bool:
        return self.dtype != torch.float64

    @property
    def padded(self) -> int:
        return self.zb.shape[1]


def prepare_triton(teacher_mc_logits, teacher_logits, top_k: int, lam: Optional[float], valid, cfg,
                   lane_major: bool = False, student_logits: Optional[torch.Tensor] = None) -> TritonProblem:
    """Top-k, tie groups, lam and the augmented points (``lane_major``: also y lane-major, for
    the "uncertainty" margins; ``student_logits`` [B, N]: also their scores in teacher order for
    the loss kernel). ``valid``: None, [B] lengths or a [B, N] bool mask; padding sorts past each
    K_b, where the kernels never read it (it may hold NaN/inf)."""
    dtype = compute_dtype(teacher_mc_logits, teacher_logits)
    mc = teacher_mc_logits.detach()
    B, T, N = mc.shape
    device = mc.device
    teacher = mc.mean(dim=1, dtype=dtype) if teacher_logits is None else teacher_logits.detach().to(dtype)
    order, _, n_valid = teacher_top_k(teacher, top_k, valid, pad_to_top_k=True, with_valid=False)
    K = order.shape[1]
    KP, TP = padded_answers(K, cfg), point_lanes(T)
    n_valid = n_valid.to(torch.int64).contiguous()
    order = order.contiguous()
    zb = torch.empty(B, KP, TP, dtype=dtype, device=device)
    zs = torch.empty_like(zb) if dtype != torch.float64 else zb
    yt = torch.empty(B, TP, KP, dtype=dtype, device=device) if lane_major else None
    hs = torch.empty(B, K, dtype=dtype, device=device)
    # one kernel: the teacher's tie groups; the top-k MC logits gathered and scaled by a power of
    # two per sample (exact; squares of logits near 1e19 would overflow fp32); lam in both units;
    # the augmented points at that lam
    gathered = torch.empty(B, T, K, dtype=dtype, device=device)  # (every output written by the kernel)
    scalars = torch.empty(3, B, dtype=dtype, device=device)  # unit, lam, lam_k
    ties = torch.empty(2, B, KP, dtype=torch.int32, device=device)  # tie_lo, tie_hi
    n_pairs = torch.empty(B, dtype=torch.int64, device=device)
    student = None if student_logits is None else torch.empty(B, KP, dtype=dtype, device=device)
    s_in = hs if student_logits is None else student_logits.detach()
    # the caller's lam, read only if set (else any pointer: n_pairs)
    fixed = n_pairs if lam is None else torch.full((1,), lam, dtype=torch.float64, device=device)
    if B:
        pairwise_stats.teacher_prepare_kernel[(B,)](
            mc, mc.stride(0), mc.stride(1), mc.stride(2), order, order.stride(0), n_valid, gathered, scalars[0],
            scalars[1], scalars[2], fixed, teacher, teacher.stride(0), teacher.stride(1), ties[0], ties[1],
            n_pairs, zb, zs, zb if yt is None else yt, hs, s_in, s_in.stride(0), s_in.stride(1),
            hs if student is None else student, negligible_noise(dtype), K, KP, T, TP=TP, BK=cfg.stats_bk,
            COMPUTE=compute_tl_dtype(dtype), FIXED_LAM=lam is not None, SPLIT=dtype != torch.float64,
            LANE_MAJOR=yt is not None, STUDENT=student is not None, INV_MAX_COST=1.0 / MAX_COST[dtype],
            BIG=torch.finfo(dtype).max, TINY=torch.finfo(dtype).tiny, num_warps=8)
    p = TritonProblem(order=order, n_valid=n_valid, zb=zb, zs=zs, hs=hs, lam=scalars[1],
                      lam_k=scalars[2], unit=scalars[0], tie_lo=ties[0], tie_hi=ties[1], n_pairs=n_pairs, T=T,
                      dtype=dtype, mc=gathered, yt=yt, student=student)
    return p


def _stats_args(p: TritonProblem, lam: torch.Tensor):
    mc = p.mc
    return (mc, mc.stride(0), mc.stride(1), mc.stride(2), p.n_valid, lam)


def mean_uncertainty(p: TritonProblem, out: torch.Tensor, cfg) -> None:
    """``out`` [B] <- each sample's mean off-diagonal U (1 where it is rounding noise)."""
    B = out.shape[0]
    pairwise_stats.pairwise_lam_kernel[(B,)](*_stats_args(p, out), negligible_noise(p.dtype), p.T,
                                             TP=p.zb.shape[2], BK=cfg.stats_bk, COMPUTE=compute_tl_dtype(p.dtype),
                                             num_warps=4)


def build_points(p: TritonProblem, lam: torch.Tensor, cfg) -> None:
    """Z (lanes p = q = -hs), hs and the lane-major y for the smoothing ``lam`` [B]."""
    B, K = p.order.shape
    KP, TP = p.padded, p.zb.shape[2]
    pairwise_stats.pairwise_points_kernel[(B, KP // cfg.stats_bk)](
        *_stats_args(p, lam), p.zb, p.zs, p.zb if p.yt is None else p.yt, p.hs, K, KP, p.T, TP=TP, BK=cfg.stats_bk,
        SPLIT=p.split, COMPUTE=compute_tl_dtype(p.dtype), LANE_MAJOR=p.yt is not None, num_warps=4)


def write_lanes(p: TritonProblem, side: int, pot: torch.Tensor) -> None:
    """Z's p (side 0, from F) or q (side 1, from G) lane from a potential changed outside the kernels."""
    K = pot.shape[1]
    value = torch.where(p.valid, pot - p.hs, torch.full_like(pot, PAD_LOGIT))
    lane = p.T + side
    if p.split:  # TF32 big part by the kernels' rounding (+0x1000, keep 19 bits), then the exact rest
        big = ((value.view(torch.int32) + 0x1000) & -0x2000).view(torch.float32)
        p.zb[:, :K, lane] = big
        p.zs[:, :K, lane] = value - big
    else:
        p.zb[:, :K, lane] = value


class HalfStep:
    """``half_step(side, pot, prev_delta, next_delta)``: one launch of the Sinkhorn half-step
    kernel (side 0 updates F from G, side 1 G from F; samples with ``prev_delta <= tol`` exit at
    once), with its workspace: the partial row sums of several column shares and the tickets.
    ``spare`` [B, K] stands in for the partial sums with one share (never read then).

    ``symmetric`` (the plain, Anderson and over-relaxed schemes with ``cfg.sink_sym``):
    :meth:`symmetric` launches ``sinkhorn_symmetric_half_step_kernel`` instead, half-step ``h`` of
    at most ``half_steps`` reading the range of ``F - G`` the previous one left in ``rng[h]``.
    ``polish``: two more rows, ``rng[polish_row]`` = +inf (a range no sample fits: the kernel's
    shifted pass, for half-steps after samples froze at different points) and one it writes."""

    def __init__(self, p: TritonProblem, cfg, tol_t: torch.Tensor, spare: torch.Tensor, symmetric: bool = False,
                 half_steps: int = 0, polish: bool = False):
        B, K = p.hs.shape
        device = p.hs.device
        self.p, self.tol_t = p, tol_t
        common = dict(T=p.T, TP=p.zb.shape[2], SPLIT=p.split, COMPUTE=compute_tl_dtype(p.dtype),
                      SHIFT_LO=2.0 ** cfg.shift_lo_log2, SHIFT_HI=2.0 ** cfg.shift_hi_log2)
        if symmetric:
            bs = cfg.sym_block
            rb = triton_cdiv(K, bs)
            split = resolve_split(cfg, B * rb, device, cfg.sym_ctas_per_sm)
            self.n_slots = split + rb // 2  # own shares, then the blocks at distance 1 .. rb // 2
            self.part = torch.empty(B, rb, self.n_slots, bs, dtype=p.dtype, device=device)
            self.rng = torch.full((half_steps + (3 if polish else 1), B, 2), float("-inf"), dtype=p.dtype,
                                  device=device)
            self.rng[0] = 0.0  # F = G = 0 before the first half-step
            self.polish_row = half_steps + 1
            if polish:
                self.rng[self.polish_row] = float("inf")
            self.launch_symmetric = DirectLaunch(
                sinkhorn.sinkhorn_symmetric_half_step_kernel, (B, rb, split),
                dict(common, BS=bs, BMV=min(cfg.sym_rows, bs), SYM_SPREAD=float(cfg.sym_spread),
                     num_warps=cfg.sym_warps, num_stages=cfg.sym_stages, maxnreg=symmetric_maxnreg(cfg, p.split)),
                enabled=bool(cfg.direct_launch))
        else:
            rb = triton_cdiv(K, cfg.sink_bm)
            split = resolve_split(cfg, B * rb, device)
            self.part = torch.empty(split, B, K, dtype=p.dtype, device=device) if split > 1 else spare
            self.options = dict(common, BM=cfg.sink_bm, BN=cfg.sink_bn, ACC=cfg.sink_acc, num_warps=cfg.sink_warps,
                                num_stages=cfg.sink_stages, maxnreg=half_step_maxnreg(cfg, p.split))
        self.grid = (B, rb, split)
        self.tickets = torch.zeros(B, rb, dtype=torch.int32, device=device)  # the last one resets its counter

    def __call__(self, side: int, pot, prev, nxt) -> None:
        p = self.p
        sinkhorn.sinkhorn_half_step_kernel[self.grid](
            p.zb, p.zs, p.hs, p.n_valid, pot, self.part, self.tickets, prev, nxt, self.tol_t, p.hs.shape[1], p.padded,
            G_SIDE=side, WRITE_DELTA=side == 1, **self.options)

    def symmetric(self, h: int, side: int, pot, other, gate, row: int) -> None:
        """Rows ``row`` (the previous iteration's statistics) and ``row + 1`` (this one's) of
        ``gate`` [rows, B]; rows ``h`` and ``h + 1`` of the range buffer. Every launch of a call
        passes the same tensors, so all but the first per side skip Triton's JIT dispatch."""
        p = self.p
        self.launch_symmetric((side, id(pot), id(other), id(gate)), (pot, other, gate), (
            p.zb, p.zs, p.hs, p.n_valid, pot, other, self.part, self.tickets, gate, row, self.rng, h, self.tol_t,
            p.hs.shape[1], p.padded, self.n_slots), dict(G_SIDE=side, WRITE_DELTA=side == 1))


class StopPoll:
    """The host's look at the device's stopping flags: ``stop_after(launched)`` after each launched
    iteration says whether to stop launching. Every ``check_every`` iterations "any sample still
    active" (``delta[launched] > tol``) is copied to the host; on CUDA asynchronously (pinned
    memory and an event), read once the copy has landed, one copy in flight at a time.

    A host ahead of the device would launch iterations past the stop until the flag lands (their
    programs exit at once, but each is still a launch on both sides): once it has launched
    ``ahead`` iterations past the pending flag's, it waits for that flag (``ahead`` = 0: never
    waits). A host-bound call never waits (the flag has landed); a device-bound one keeps
    ``ahead`` iterations queued while it waits, so the device never idles for it."""

    def __init__(self, delta: torch.Tensor, tol: float, check_every: int, ahead: int, asynchronous: bool):
        self.delta, self.tol, self.every, self.ahead = delta, tol, check_every, ahead
        self.asynchronous = asynchronous
        self.pending = None  # (host flag, event, iteration)

    def _copy(self, flag: torch.Tensor):
        """The flag on the host and an event that completes when it has landed."""
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def stop_after(self, launched: int) -> bool:
        if self.pending is not None:
            host, event, at = self.pending
            landed = event.query()
            if not landed and 0 < self.ahead <= launched - at:
                event.synchronize()  # bounded look-ahead (class docstring)
                landed = True
            if landed:
                if not bool(host):
                    return True  # every sample froze at or before iteration `at`
                self.pending = None
        if self.pending is None and launched % self.every == 0:
            flag = (self.delta[launched] > self.tol).any()
            if not self.asynchronous:
                return not bool(flag)
            self.pending = self._copy(flag) + (launched,)
        return False


def sinkhorn_potentials_triton(p: TritonProblem, max_iter: int, tol: float, cfg, scheme: str = "plain"):
    """Log-domain Sinkhorn: base-2 potentials ``F = log2 u``, ``G = log2 v`` [B, K], the number of
    iterations launched and each sample's iterations [B] (int64). Leaves ``p = F - hs`` and
    ``q = G - hs`` in the lanes of Z for the loss kernel. ``scheme``: docs/sinkhorn.md; the
    accelerated ones act between the half-step kernels (one per-sample kernel per half-step,
    kernels/sinkhorn_accel.py: no extra exponentials of pairs, no host sync). Anderson iterates
    the symmetric half-step map: F = F(x) from the iterate x in G, then its kernel writes the next
    x into G (or, once converged, F = G = the last half-step); "iterations" count half-steps / 2.

    No host sync per iteration: every ``check_every`` iterations the "any sample still active"
    flag is copied to the host asynchronously and read a few iterations later, once the copy has
    landed (on CUDA; the interpreter reads it at once), waiting for it only once the host has
    launched ``cfg.poll_ahead`` iterations past it (:class:`StopPoll`). Stopping late is harmless:
    launches for frozen samples exit at once. "scaling" syncs once, for its number of levels.
    """
    B, K = p.hs.shape
    device = p.hs.device
    F, G = torch.zeros(2, B, K, dtype=p.dtype, device=device).unbind(0)
    # Anderson runs half-steps of the symmetric map (docs/sinkhorn.md): two per iteration of budget
    steps = 2 * max_iter if scheme == "anderson" else max_iter
    if not (B and K):
        return F, G, 0, torch.zeros(B, dtype=torch.int64, device=device)
    delta = torch.zeros(steps + 1, B, dtype=p.dtype, device=device)  # next rows: atomic max from 0
    delta[0].fill_(float("inf"))
    tol_t = torch.full((1,), tol, dtype=p.dtype, device=device)
    has_partner = p.n_valid >= 2
    symmetric = scheme in ("plain", "anderson", "overrelaxed") and cfg.sink_sym
    half_step = HalfStep(p, cfg, tol_t, F, symmetric=symmetric, half_steps=2 * steps, polish=scheme == "overrelaxed")

    cap = coarse = None  # "scaling": each sample's iterations left after its own coarse phase
    if scheme == "scaling":
        coarse = _coarse_levels(p, F, G, half_step, cfg, max_iter)
        cap = max_iter - coarse
    relax = RelaxationLauncher(p, tol_t, direct=bool(cfg.direct_launch)) if scheme == "overrelaxed" else None
    mixer = AndersonLauncher(p, tol_t, direct=bool(cfg.direct_launch)) if scheme == "anderson" else None
    # tol = 0 runs max_iter: nothing to poll (and nothing that breaks a CUDA graph)
    poll = StopPoll(delta, tol, cfg.check_every, cfg.poll_ahead, device.type == "cuda") if tol > 0 else None
    launched = 0
    for it in range(steps):
        prev, nxt = delta[it], delta[it + 1]
        if cap is not None:
            prev.masked_fill_(cap <= it, 0.0)  # out of budget: frozen like a converged sample
        if mixer is not None:  # F = F(x) from the iterate x in G, then the mixer's step
            if symmetric:
                half_step.symmetric(it, 0, F, G, delta, it)
                mixer.step(G, F, prev, nxt, last=it == steps - 1, rng=half_step.rng[it + 1])
            else:
                half_step(0, F, prev, nxt)
                mixer.step(G, F, prev, nxt, last=it == steps - 1)
        else:
            for side, (pot, other) in enumerate(((F, G), (G, F))):
                if relax is not None:
                    relax.save(pot)
                if symmetric:
                    half_step.symmetric(2 * it + side, side, pot, other, delta, it)
                else:
                    half_step(side, pot, prev, nxt)
                if relax is not None:  # the last half-step stays plain; a relaxed one rewrites the range
                    relax.after_half_step(side, pot, prev, nxt, step=not (side == 1 and it == max_iter - 1),
                                          other=other, rng=half_step.rng[2 * it + side + 1] if symmetric else None)
        launched = it + 1
        if launched >= steps:
            break
        if poll is not None and poll.stop_after(launched):
            break
    ran = ((delta[:launched] > tol).sum(dim=0) * has_partner).to(torch.int64)
    iterations = iterations_of_half_steps(ran) if mixer is not None else ran
    if coarse is not None:
        iterations = iterations + coarse
    if relax is not None:  # one plain iteration after a relaxed stop (the CPU path's polish)
        polish = relax.relaxed.bool() & (iterations < max_iter)
        gate = torch.zeros(2, B, dtype=p.dtype, device=device)
        gate[0] = torch.where(polish, float("inf"), 0.0)
        if symmetric:  # the samples froze at different half-steps: the shifted pass (rng = +inf)
            half_step.symmetric(half_step.polish_row, 0, F, G, gate, 0)
            half_step.symmetric(half_step.polish_row, 1, G, F, gate, 0)
        else:
            half_step(0, F, gate[0], gate[1])
            half_step(1, G, gate[0], gate[1])
        iterations += polish.to(torch.int64)
    return F, G, iterations_of_half_steps(launched) if mixer is not None else launched, iterations


def _coarse_levels(p: TritonProblem, F, G, half_step, cfg, max_iter: int) -> torch.Tensor:
    """Epsilon-scaling's coarse phase (the CPU path's ``_scaling``): at each level ``lam * c``, c
    halving from ``mean(U) / lam`` to 1 per sample, up to ``SCALING_ITERS_PER_LEVEL`` iterations
    until the plain step is below ``SCALING_LEVEL_TOL``; potentials kept in cost units. Leaves Z
    at ``lam`` with the lanes of (F, G); returns the iterations each sample ran (each within its
    own ``max_iter``: a sample's budget does not depend on the others in the batch)."""
    B = F.shape[0]
    mean_u = torch.empty_like(p.lam)
    mean_uncertainty(p, mean_u, cfg)
    c = coarse_factors(mean_u / p.lam_k)
    levels = int(math.ceil(math.log2(float(c.max()))))  # the scheme's one host sync
    ran = torch.zeros(B, dtype=torch.int64, device=F.device)
    gate = torch.zeros(SCALING_ITERS_PER_LEVEL + 1, B, dtype=p.dtype, device=F.device)
    for _ in range(levels):
        coarse = (c > 1) & (p.n_valid >= 2) & (ran < max_iter)
        build_points(p, p.lam_k * c, cfg)
        write_lanes(p, 0, F)
        write_lanes(p, 1, G)
        gate.zero_()
        gate[0] = torch.where(coarse, float("inf"), 0.0)
        for it in range(SCALING_ITERS_PER_LEVEL):  # a sample leaves the level once its plain step is small
            half_step(0, F, gate[it], gate[it + 1])
            half_step(1, G, gate[it], gate[it + 1])
            ran += (gate[it] > 0).to(torch.int64)
            gate[it + 1] = torch.where((gate[it + 1] > SCALING_LEVEL_TOL) & (ran < max_iter), gate[it + 1], 0.0)
        c_next = (c / 2).clamp(min=1)
        F.mul_((c / c_next)[:, None])
        G.mul_((c / c_next)[:, None])
        c = c_next
    if levels:
        build_points(p, p.lam_k, cfg)
        write_lanes(p, 0, F)
        write_lanes(p, 1, G)
    return ran


def sorted_student(student_logits: torch.Tensor, p: TritonProblem) -> torch.Tensor:
    """The student's scores in teacher order, [B, KP] in the compute dtype, -inf past each K_b
    (the loss kernel's column loads are unmasked: a mask costs ~2.5 instructions per pair)."""
    B, K = p.order.shape
    student = torch.full((B, p.padded), float("-inf"), dtype=p.dtype, device=p.order.device)
    student[:, :K] = student_logits.detach().gather(1, p.order).masked_fill_(~p.valid, float("-inf"))
    return student


def symmetric_loss(cfg, mode: str) -> bool:
    """Whether eq. 4 runs ``margin_ranking_symmetric_kernel`` (each unordered pair once): with
    ``cfg.loss_sym``, for every margin mode but "uncertainty" (whose lanes of y, hoisted for the
    stationary block, spill there: 568 bytes on sm_90 against 256 in the ordered kernel)."""
    return bool(cfg.loss_sym) and mode != "uncertainty"


def margin_loss_triton(student_logits, p: TritonProblem, margin: float, mode: str, seed: int, cfg):
    """Per-sample eq. 4 losses [B] and their gradient w.r.t. ``student_logits`` [B, N] (compute
    dtype; zero outside the top-k). Mode "ot" reads the potentials that
    :func:`sinkhorn_potentials_triton` left in the lanes of Z."""
    B, K = p.hs.shape
    N = student_logits.shape[1]
    NB = triton_cdiv(K, cfg.loss_bm)
    device = p.hs.device
    loss_part = torch.empty(B, NB, dtype=p.dtype, device=device)
    grad = torch.zeros(B, N, dtype=p.dtype, device=device)
    ids = rowhash = p.order  # placeholders: only "random" reads them
    if mode == "random":  # computed on the device: a host-to-device copy would synchronise
        ids = torch.zeros(B, p.padded, dtype=torch.int64, device=device)
        ids[:, :K] = p.order
        rowhash = row_hashes(seed, torch.arange(B, dtype=torch.int64, device=device))
    margin_t = torch.full((1,), margin, dtype=p.dtype, device=device)
    options = dict(MODE=MODE_IDS[mode], T=p.T, TP=p.zb.shape[2], SPLIT=p.split, COMPUTE=compute_tl_dtype(p.dtype),
                   num_warps=cfg.loss_warps if mode == "ot" else cfg.loss_warps_other, num_stages=cfg.loss_stages)
    student = sorted_student(student_logits, p) if p.student is None else p.student
    if symmetric_loss(cfg, mode):
        work = torch.zeros(B, p.padded + 1, dtype=torch.int32, device=device)  # counts, then the ticket
        loss = torch.empty(B, dtype=p.dtype, device=device)
        margin_ranking.margin_ranking_symmetric_kernel[(B, NB)](
            p.zb, p.zs, p.n_valid, p.tie_hi, student, ids, rowhash, p.order, p.n_pairs, loss_part, work, loss, grad,
            margin_t, K, p.padded, NB, N, BS=cfg.loss_bm, **options)
        return loss, grad
    # MODE 3 turns ||y_i - y_j||^2 back into U with this lam: the caller's units (saturated)
    lam_u = (p.lam_k.double() * p.unit).clamp(max=torch.finfo(p.dtype).max).to(p.dtype) if mode == "uncertainty" \
        else p.lam_k
    scale = torch.empty(B, dtype=p.dtype, device=device)
    margin_ranking.margin_ranking_kernel[(B, NB)](
        p.zb, p.zs, p.zb if p.yt is None else p.yt, p.n_valid, lam_u, p.tie_lo, p.tie_hi, student, ids, rowhash,
        p.order, p.n_pairs, loss_part, scale, grad, margin_t, K, p.padded, NB, N, BM=cfg.loss_bm, BN=cfg.loss_bn,
        EPS=UNCERTAINTY_EPS, **options)
    return loss_part.sum(dim=1) * scale, grad


def pairwise_forward_triton(student_logits, teacher_mc_logits, teacher_logits, valid, margin: float, mode: str,
                            lam: Optional[float], top_k: int, max_iter: int, tol: float, seed: int,
                            scheme: str = "plain", config: Optional[TritonConfig] = None):
    """(per-sample losses [B], gradient of each sample's loss w.r.t. ``student_logits`` [B, N],
    Sinkhorn iterations [B])."""
    check_device(student_logits)
    dtype = compute_dtype(teacher_mc_logits, teacher_logits)
    cfg = config or default_config(triton_interpret(), dtype)
    B, N = student_logits.shape
    p = prepare_triton(teacher_mc_logits.to(dtype) if dtype == torch.float64 else teacher_mc_logits,
                       None if teacher_logits is None else teacher_logits.to(dtype), top_k, lam, valid, cfg,
                       lane_major=mode == "uncertainty", student_logits=student_logits)
    K = p.order.shape[1]
    if not (B and K):
        return (student_logits.new_zeros(B, dtype=dtype), student_logits.new_zeros(B, N, dtype=dtype),
                student_logits.new_zeros(B, dtype=torch.int64))
    if mode == "ot":
        _, _, _, iterations = sinkhorn_potentials_triton(p, max_iter, tol, cfg, scheme)
    else:
        iterations = torch.zeros(B, dtype=torch.int64, device=student_logits.device)
    loss, grad = margin_loss_triton(student_logits, p, margin, mode, seed, cfg)
    return loss, grad, iterations


def sinkhorn_log_potentials_triton(teacher_mc_logits, teacher_logits=None, lam: Optional[float] = None,
                                   top_k: int = 2500, max_iter: int = 100, tol: float = 1e-5, lengths=None,
                                   config: Optional[TritonConfig] = None, scheme: str = "plain"):
    """Natural-log potentials ``(f, g)`` [B, K] on the teacher's top-k answers (teacher order),
    the ids ``order`` [B, K], the number of iterations launched and each sample's iterations [B];
    for tests and benchmarks."""
    check_device(teacher_mc_logits)
    dtype = compute_dtype(teacher_mc_logits, teacher_logits)
    cfg = config or default_config(triton_interpret(), dtype)
    p = prepare_triton(teacher_mc_logits, teacher_logits, top_k, lam, lengths, cfg)  # lengths or a mask
    F, G, launched, iterations = sinkhorn_potentials_triton(p, max_iter, tol, cfg, scheme)
    return F * LN2, G * LN2, p.order, launched, iterations


def pair_uniform_triton(seed: int, row: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """The "random" mode's weights computed by the kernels' uint32 hash (1-D int64 inputs), fp32."""
    rowhash = row_hashes(seed, row.to(torch.int64)).contiguous()
    out = torch.empty(row.shape[0], dtype=torch.float32, device=row.device)
    n = row.shape[0]
    if n:
        margin_ranking.pair_uniform_kernel[(triton_cdiv(n, 256),)](rowhash, i.to(torch.int64).contiguous(), j.to(torch.int64).contiguous(),
                                                out, n, BLOCK=256)
    return out


# ----------------------------------------------------------------------------- torch.library op
def pairwise_loss(student_logits: torch.Tensor, teacher_mc_logits: torch.Tensor,
                  teacher_logits: Optional[torch.Tensor], valid: Optional[torch.Tensor], margin: float,
                  margin_mode: str, lam: Optional[float], top_k: int, max_iter: int, tol: float, seed: int,
                  sinkhorn: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contract of ``pairwise_loss_cpu``: losses [B], gradient [B, N], Sinkhorn iterations [B];
    ``valid``: None, [B] lengths or a [B, N] bool mask of the valid answers."""
    with no_autocast(student_logits):
        return pairwise_forward_triton(student_logits, teacher_mc_logits, teacher_logits, valid, margin,
                                       margin_mode, lam, top_k, max_iter, tol, seed, sinkhorn)


pairwise_loss_op = torch.library.custom_op(OP_NAME, pairwise_loss, mutates_args=())


@pairwise_loss_op.register_fake
def _pairwise_loss_fake(student_logits, teacher_mc_logits, teacher_logits, valid, margin, margin_mode, lam, top_k,
                        max_iter, tol, seed, sinkhorn):
    return fake_outputs(student_logits, teacher_mc_logits, teacher_logits)


# what radi_pairwise_loss calls: the op, or its body as an autograd.Function in plain eager mode
pairwise_loss_call = precomputed_gradient_call(pairwise_loss_op, pairwise_loss, "PairwiseLossTriton")
