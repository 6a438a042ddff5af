"""RADI-P on the Triton kernels of ``kernels/``: launch helpers, the ``torch.library`` op, autograd.

Pipeline of one call (nothing of size K x K is ever allocated; see docs/triton.md):

1. teacher ranking and top-k truncation: ``radi_fast.pairwise.teacher_top_k`` (the CPU path's own
   function, so ties and padding sort identically), one sort of ``[B, N]``;
2. ``pairwise_stats_kernel``: centring, scaled points ``y`` [B, TP, K], ``hs`` [B, K], "auto" lam;
3. ``mode == "ot"``: ``sinkhorn_half_step_kernel`` twice per iteration (F then G), per-sample
   freezing on device, the host looking at the stopping flags every ``check_every`` iterations;
4. ``margin_ranking_kernel``: eq. 4 and the integer gradient counts in one pass;
5. per-sample loss ``sum / |R_p|`` and gradient ``counts / |R_p|`` scattered back to ``[B, N]``.

Precision: fp16 / bf16 / fp32 inputs are computed in fp32 (every load is converted, every sum
accumulates in fp32); fp64 inputs are computed in fp64 (under the interpreter and on a GPU alike;
on a GPU fp64 is correct but slow). The loss comes back in the compute dtype (like the CPU path),
the gradient in the student's dtype.

The registered op is ``torch.ops.radi_fast.pairwise_loss_triton`` (a ``torch.library.custom_op``
with a fake implementation and ``register_autograd``): ``torch.compile`` treats it as one opaque
node, so the data-dependent parts (the sort, the early stop of Sinkhorn) never reach the tracer.
It returns ``(loss [B], grad [B, N])``; the gradient w.r.t. the student is computed in the forward
pass (design notes) and the backward only scales it.

Devices: CUDA tensors run the compiled kernels. CPU tensors need ``TRITON_INTERPRET=1`` (the
Triton interpreter; that is how the tests run on a machine without a GPU): if the variable is set
after the kernel modules were first imported, they are re-imported in interpreter mode.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, fields, replace
from typing import Optional, Tuple

import torch

from .._random import MASK32, lowbias32
from ..pairwise import compute_dtype, teacher_top_k

OP_NAME = "radi_fast::pairwise_loss_triton"
MODE_IDS = {"ot": 0, "uniform": 1, "random": 2, "uncertainty": 3}
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_KERNEL_MODULES = ("common", "pairwise_stats", "sinkhorn", "margin_ranking")


# ----------------------------------------------------------------------------- kernel modules
def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _import_kernels_package():
    """``radi_fast.kernels``: installed (setup.py maps kernels/ there) or, from a source checkout,
    loaded from the ``kernels/`` folder beside ``radi_fast/``."""
    try:
        return importlib.import_module("radi_fast.kernels")
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        init = os.path.join(root, "kernels", "__init__.py")
        if not os.path.exists(init):
            raise
        spec = importlib.util.spec_from_file_location("radi_fast.kernels", init,
                                                      submodule_search_locations=[os.path.dirname(init)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["radi_fast.kernels"] = module
        spec.loader.exec_module(module)
        return module


def kernels():
    """The kernel modules as a namespace, in the mode (compiled or interpreted) that
    ``TRITON_INTERPRET`` asks for now: Triton fixes the mode when a kernel is decorated, so the
    modules are re-imported when the variable changed since their first import."""
    _import_kernels_package()
    mods = {name: importlib.import_module(f"radi_fast.kernels.{name}") for name in _KERNEL_MODULES}
    from triton.runtime.interpreter import InterpretedFunction

    interpreted = isinstance(mods["sinkhorn"].sinkhorn_half_step_kernel, InterpretedFunction)
    if interpreted != _interpret_requested():
        try:  # Triton >= 3.4 caches the variable in its knobs
            from triton import knobs

            knobs.runtime.interpret = _interpret_requested()
        except (ImportError, AttributeError):
            pass
        for name in _KERNEL_MODULES:
            mods[name] = importlib.reload(mods[name])
    return _Namespace(mods)


class _Namespace:
    def __init__(self, mods):
        self.stats = mods["pairwise_stats"].pairwise_stats_kernel
        self.half_step = mods["sinkhorn"].sinkhorn_half_step_kernel
        self.loss = mods["margin_ranking"].margin_ranking_kernel
        self.pair_uniform = mods["margin_ranking"].pair_uniform_kernel


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class TritonConfig:
    """Tile sizes and launch parameters. ``sink_*``: Sinkhorn half-step; ``loss_*``: eq. 4 kernel.

    ``use_dot``: the Sinkhorn logits ``<y_i, y_j>`` on tensor cores (tf32x3) rather than T FFMAs.
    ``shift``: the Sinkhorn's shifted pass (previous log-sum-exp as the shift, online pass only
    as a fallback); ``False`` runs the online pass alone. ``shift_lo_log2``, ``shift_hi_log2``:
    the window of row sums the shifted pass accepts (a narrow one forces the fallback: tests).
    ``check_every``: host look at the Sinkhorn stopping flags every this many iterations.
    ``sink_phases``: 2 (default on a GPU): a lean shifted-pass kernel writes per-row partial sums
    over ``sink_split`` column shares, a second kernel adds them and takes the online fallback
    where needed (the shifted kernel then needs 108 registers instead of 195 at 128 x 128 tiles:
    2 programs per SM instead of 1); 1: one kernel does both (the interpreter's default: fewer
    launches). ``sink_split``: column shares (0: :func:`choose_split` from the SM count and
    ``split_ctas_per_sm``, the phase-1 programs one SM holds at once, 2 at the default tiles by
    the register count in kernels/sm90_report.py, to fill the last wave).
    Overridable with ``RADI_FAST_TRITON_CONFIG="sink_bm=64,sink_bn=128,use_dot=0"``.
    """

    sink_bm: int = 128
    sink_bn: int = 128
    sink_warps: int = 8
    sink_stages: int = 3
    use_dot: bool = True
    shift: bool = True
    shift_lo_log2: int = -60
    shift_hi_log2: int = 100
    loss_bm: int = 128
    loss_bn: int = 64
    loss_warps: int = 8
    stats_bk: int = 128
    check_every: int = 4
    sink_phases: int = 2
    sink_split: int = 0
    split_ctas_per_sm: int = 2


# the interpreter's cost is per tile op, not per element: large tiles (the tests cover small ones)
INTERPRETER_CONFIG = TritonConfig(sink_bm=128, sink_bn=128, sink_warps=4, sink_stages=1, sink_phases=1,
                                  loss_bm=128, loss_bn=128, stats_bk=128)


def parse_config_override(text: str, base: TritonConfig) -> TritonConfig:
    types = {f.name: f.type for f in fields(TritonConfig)}
    updates = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in types:
            raise ValueError(f"RADI_FAST_TRITON_CONFIG: unknown key {key!r}; expected one of {sorted(types)}")
        updates[key] = value.strip().lower() in ("1", "true", "yes") if types[key] in (bool, "bool") else int(value)
    return replace(base, **updates)


def default_config(interpret: bool, dtype: torch.dtype) -> TritonConfig:
    cfg = INTERPRETER_CONFIG if interpret else TritonConfig()
    if dtype == torch.float64 and not interpret:  # fp64 tiles cost twice the registers
        cfg = replace(cfg, sink_bm=64, sink_bn=64, sink_warps=4, split_ctas_per_sm=2, loss_bm=64, loss_bn=64,
                      loss_warps=4)
    override = os.environ.get("RADI_FAST_TRITON_CONFIG")
    if override:
        cfg = parse_config_override(override, cfg)
    return cfg


def _tl_dtype(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _check_device(t: torch.Tensor, interpret: bool) -> None:
    if t.device.type != "cuda" and not interpret:
        raise RuntimeError(
            "radi_fast's Triton backend runs on CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
            "(the Triton interpreter) or use backend='torch'")


# ----------------------------------------------------------------------------- stages
@dataclass
class TritonProblem:
    """Teacher-side quantities on the top-k answers (``K = max_b K_b``), compute dtype.

    order: [B, K] answer ids in teacher order; valid: [B, K]; n_valid: [B] int64 K_b;
    y: [B, TP, K] scaled centred points; hs: [B, K]; lam: [B]; teacher: [B, K] sorted scores.
    """

    order: torch.Tensor
    valid: torch.Tensor
    n_valid: torch.Tensor
    y: torch.Tensor
    hs: torch.Tensor
    lam: torch.Tensor
    teacher: torch.Tensor
    T: int
    dtype: torch.dtype


def prepare_triton(teacher_mc_logits, teacher_logits, top_k: int, lam: Optional[float], lengths, cfg, ks):
    dtype = compute_dtype(teacher_mc_logits, teacher_logits)
    mc = teacher_mc_logits.detach()
    B, T, N = mc.shape
    teacher = mc.mean(dim=1, dtype=dtype) if teacher_logits is None else teacher_logits.detach().to(dtype)
    order, valid, n_valid = teacher_top_k(teacher, top_k, lengths)
    K = order.shape[1]
    TP = max(16, 1 << (T + 1).bit_length())  # >= T + 2: two augmented lanes (sinkhorn.py)
    y = torch.empty(B, TP, K, dtype=dtype, device=mc.device)
    hs = torch.empty(B, K, dtype=dtype, device=mc.device)
    lam_b = torch.empty(B, dtype=dtype, device=mc.device)
    if lam is not None:
        lam_b.fill_(lam)
    n_valid = n_valid.to(torch.int64).contiguous()
    order = order.contiguous()
    if B and K:
        ks.stats[(B,)](mc, mc.stride(0), mc.stride(1), mc.stride(2), order, order.stride(0), n_valid, lam_b, y, hs,
                       K, T, TP=TP, BK=cfg.stats_bk, AUTO=lam is None, COMPUTE=_tl_dtype(dtype), num_warps=4)
    return TritonProblem(order=order, valid=valid, n_valid=n_valid, y=y, hs=hs, lam=lam_b,
                         teacher=teacher.gather(1, order).contiguous(), T=T, dtype=dtype)


def choose_split(n_programs: int, slots: int, max_split: int = 4) -> int:
    """Column shares per row block for the two-phase Sinkhorn half-step: the count that best
    fills the last wave of ``n_programs * split`` phase-1 programs over ``slots`` concurrent ones,
    each extra share charged 1.5% (it re-reads its rows and writes one more partial sum)."""
    best, best_eff = 1, 0.0
    for split in range(1, max_split + 1):
        n = n_programs * split
        eff = n / (triton_cdiv(n, slots) * slots) * (1.0 - 0.015 * (split - 1))
        if eff > best_eff + 1e-9:
            best, best_eff = split, eff
    return best


def resolve_phases(cfg: TritonConfig, n_programs: int, device: torch.device) -> Tuple[int, int]:
    """(phases, column shares) of the Sinkhorn half-step for this launch."""
    if not cfg.shift or cfg.sink_phases == 1:
        return 1, 1  # the online pass keeps a running max: single phase, no split
    if cfg.sink_split > 0:
        return 2, cfg.sink_split
    if device.type != "cuda":
        return 2, 1
    slots = torch.cuda.get_device_properties(device).multi_processor_count * cfg.split_ctas_per_sm
    return 2, choose_split(n_programs, slots)


def sinkhorn_potentials_triton(p: TritonProblem, max_iter: int, tol: float, cfg, ks):
    """Log-domain Sinkhorn: base-2 potentials ``F = log2 u``, ``G = log2 v`` [B, K] and the number
    of iterations launched (>= the largest per-sample count; frozen samples do no work).

    No host sync per iteration: every ``check_every`` iterations the "any sample still active"
    flag is copied to the host asynchronously and read a few iterations later, once the copy has
    landed (on CUDA; the interpreter reads it at once). Stopping late is harmless: launches for
    frozen samples exit at once, so the result is the same as stopping at the first moment.
    """
    B, K = p.hs.shape
    device = p.hs.device
    F = torch.zeros(B, K, dtype=p.dtype, device=device)
    G = torch.zeros(B, K, dtype=p.dtype, device=device)
    delta = torch.zeros(max_iter + 1, B, dtype=p.dtype, device=device)
    delta[0] = float("inf")
    if not (B and K):
        return F, G, 0
    rb = triton_cdiv(K, cfg.sink_bm)
    phases, split = resolve_phases(cfg, B * rb, device)
    part = torch.empty(split, B, K, dtype=p.dtype, device=device) if phases == 2 else F
    TP = p.y.shape[1]
    common = dict(T=p.T, TP=TP, BM=cfg.sink_bm, BN=cfg.sink_bn, USE_DOT=cfg.use_dot, SHIFT=cfg.shift,
                  COMPUTE=_tl_dtype(p.dtype), SHIFT_LO=2.0 ** cfg.shift_lo_log2, SHIFT_HI=2.0 ** cfg.shift_hi_log2,
                  num_warps=cfg.sink_warps, num_stages=cfg.sink_stages)
    asynchronous = device.type == "cuda"
    pending = None
    launched = 0
    for it in range(max_iter):
        prev, nxt = delta[it], delta[it + 1]
        for src, dst, write_delta in ((G, F, False), (F, G, True)):
            if phases == 2:
                ks.half_step[(B, rb, split)](p.y, p.hs, p.n_valid, src, dst, prev, nxt, part, tol, K, split,
                                             WRITE_DELTA=write_delta, PHASE=1, **common)
                ks.half_step[(B, rb)](p.y, p.hs, p.n_valid, src, dst, prev, nxt, part, tol, K, split,
                                      WRITE_DELTA=write_delta, PHASE=2, **common)
            else:
                ks.half_step[(B, rb)](p.y, p.hs, p.n_valid, src, dst, prev, nxt, part, tol, K, 1,
                                      WRITE_DELTA=write_delta, PHASE=0, **common)
        launched = it + 1
        if launched >= max_iter:
            break
        if pending is not None and (not asynchronous or pending[1].query()):
            if not bool(pending[0]):
                break  # every sample froze at or before the checked iteration
            pending = None
        if pending is None and launched % cfg.check_every == 0:
            flag = (delta[launched] > tol).any()
            if asynchronous:
                host = torch.empty((), dtype=torch.bool, pin_memory=True)
                host.copy_(flag, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                pending = (host, event)
            else:
                if not bool(flag):
                    break
    return F, G, launched


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def ordered_pair_counts(teacher_sorted: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """|R_p| per sample, ``sum_i #{j valid: t_j < t_i}`` over valid i, in O(K log K) ([B] int64)."""
    keys = torch.where(valid, teacher_sorted, torch.full_like(teacher_sorted, float("inf")))
    ascending = torch.sort(keys, dim=1).values
    less = torch.searchsorted(ascending, teacher_sorted.contiguous(), side="left")
    return (less * valid).sum(dim=1)


def margin_loss_triton(student_sorted, p: TritonProblem, F, G, margin: float, mode: str, seed: int, cfg, ks):
    """Per-sample eq. 4 losses [B] and the gradient w.r.t. the sorted student scores [B, K]."""
    B, K = p.hs.shape
    NB = triton_cdiv(K, cfg.loss_bm)
    device = p.hs.device
    loss_part = torch.empty(B, NB, dtype=p.dtype, device=device)
    cnt = torch.zeros(B, K, dtype=torch.int32, device=device)
    rowhash = torch.zeros(B, dtype=torch.int64, device=device)
    if mode == "random":
        h0 = int(lowbias32(torch.tensor(seed & MASK32, dtype=torch.int64)))
        rowhash = lowbias32(h0 ^ torch.arange(B, dtype=torch.int64)).to(device)
    ks.loss[(B, NB)](p.y, p.hs, F, G, p.n_valid, p.lam, p.teacher, student_sorted, p.order, rowhash, loss_part, cnt,
                     float(margin), K, NB, MODE=MODE_IDS[mode], T=p.T, TP=p.y.shape[1], BM=cfg.loss_bm,
                     BN=cfg.loss_bn, COMPUTE=_tl_dtype(p.dtype), num_warps=cfg.loss_warps)
    n_pairs = ordered_pair_counts(p.teacher, p.valid).to(p.dtype)
    scale = torch.where(n_pairs > 0, 1.0 / n_pairs.clamp(min=1), torch.zeros_like(n_pairs))
    return loss_part.sum(dim=1) * scale, cnt.to(p.dtype) * scale[:, None]


def pairwise_forward_triton(student_logits, teacher_mc_logits, teacher_logits, lengths, margin: float, mode: str,
                            lam: Optional[float], top_k: int, max_iter: int, tol: float, seed: int,
                            config: Optional[TritonConfig] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(per-sample losses [B], gradient of each sample's loss w.r.t. ``student_logits`` [B, N])."""
    interpret = _interpret_requested()
    _check_device(student_logits, interpret)
    ks = kernels()
    dtype = compute_dtype(teacher_mc_logits, teacher_logits)
    cfg = config or default_config(interpret, dtype)
    B, N = student_logits.shape
    p = prepare_triton(teacher_mc_logits.to(dtype) if dtype == torch.float64 else teacher_mc_logits,
                       None if teacher_logits is None else teacher_logits.to(dtype), top_k, lam, lengths, cfg, ks)
    K = p.order.shape[1]
    if not (B and K):
        return student_logits.new_zeros(B, dtype=dtype), student_logits.new_zeros(B, N, dtype=dtype)
    if mode == "ot":
        F, G, _ = sinkhorn_potentials_triton(p, max_iter, tol, cfg, ks)
    else:
        F = G = p.hs  # unused by the other modes
    student = student_logits.detach().to(dtype).gather(1, p.order).contiguous()
    loss, grad_k = margin_loss_triton(student, p, F, G, margin, mode, seed, cfg, ks)
    grad = torch.zeros(B, N, dtype=dtype, device=student_logits.device)
    grad.scatter_add_(1, p.order, grad_k * p.valid)
    return loss, grad


def sinkhorn_log_potentials_triton(teacher_mc_logits, teacher_logits=None, lam: Optional[float] = None,
                                   top_k: int = 2500, max_iter: int = 100, tol: float = 1e-5, lengths=None,
                                   config: Optional[TritonConfig] = None):
    """Natural-log potentials ``(f, g)`` [B, K] on the teacher's top-k answers (teacher order),
    the ids ``order`` [B, K] and the number of iterations launched; for tests and benchmarks."""
    interpret = _interpret_requested()
    _check_device(teacher_mc_logits, interpret)
    ks = kernels()
    dtype = compute_dtype(teacher_mc_logits, teacher_logits)
    cfg = config or default_config(interpret, dtype)
    p = prepare_triton(teacher_mc_logits, teacher_logits, top_k, lam, lengths, cfg, ks)
    F, G, launched = sinkhorn_potentials_triton(p, max_iter, tol, cfg, ks)
    return F * LN2, G * LN2, p.order, launched


def pair_uniform_triton(seed: int, row: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """The "random" mode's weights computed by the kernels' uint32 hash (1-D int64 inputs), fp32."""
    ks = kernels()
    h0 = int(lowbias32(torch.tensor(seed & MASK32, dtype=torch.int64)))
    rowhash = lowbias32(h0 ^ row.to(torch.int64)).contiguous()
    out = torch.empty(row.shape[0], dtype=torch.float32, device=row.device)
    n = row.shape[0]
    if n:
        ks.pair_uniform[(triton_cdiv(n, 256),)](rowhash, i.to(torch.int64).contiguous(), j.to(torch.int64).contiguous(),
                                                out, n, BLOCK=256)
    return out


# ----------------------------------------------------------------------------- torch.library op
@torch.library.custom_op(OP_NAME, mutates_args=())
def pairwise_loss_op(student_logits: torch.Tensor, teacher_mc_logits: torch.Tensor,
                     teacher_logits: Optional[torch.Tensor], lengths: Optional[torch.Tensor], margin: float,
                     margin_mode: str, lam: Optional[float], top_k: int, max_iter: int, tol: float,
                     seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """RADI-P per-sample losses [B] and their gradient w.r.t. ``student_logits`` [B, N]."""
    return pairwise_forward_triton(student_logits, teacher_mc_logits, teacher_logits, lengths, margin, margin_mode,
                                   lam, top_k, max_iter, tol, seed)


@pairwise_loss_op.register_fake
def _pairwise_loss_fake(student_logits, teacher_mc_logits, teacher_logits, lengths, margin, margin_mode, lam, top_k,
                        max_iter, tol, seed):
    dtype = compute_dtype(teacher_mc_logits, teacher_logits)
    B, N = student_logits.shape
    return student_logits.new_empty((B,), dtype=dtype), student_logits.new_empty((B, N), dtype=dtype)


def _setup_context(ctx, inputs, output):
    _, grad = output
    ctx.save_for_backward(grad)
    ctx.student_dtype = inputs[0].dtype
    ctx.mark_non_differentiable(grad)


def _backward(ctx, grad_loss, _grad_of_grad):
    (grad,) = ctx.saved_tensors
    d_student = (grad * grad_loss[:, None].to(grad.dtype)).to(ctx.student_dtype)
    return d_student, None, None, None, None, None, None, None, None, None, None


pairwise_loss_op.register_autograd(_backward, setup_context=_setup_context)


def radi_pairwise_loss_triton(student_logits, teacher_mc_logits, teacher_logits, margin: float, margin_mode: str,
                              lam_value: Optional[float], top_k: int, max_iter: int, tol: float, seed: int,
                              lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-sample RADI-P losses [B] on the Triton kernels (gradient to ``student_logits`` only).

    Called by :func:`radi_fast.radi_pairwise_loss` once its arguments are validated; ``lam_value``
    is None for "auto", ``lengths`` None or int64 [B].
    """
    loss, _ = pairwise_loss_op(student_logits, teacher_mc_logits, teacher_logits, lengths, float(margin),
                               margin_mode, None if lam_value is None else float(lam_value), int(top_k),
                               int(max_iter), float(tol), int(seed))
    return loss
