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
from ..pairwise import compute_dtype

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


_NAMESPACES = {}


def kernels():
    """The kernel modules as a namespace, in the mode (compiled or interpreted) that
    ``TRITON_INTERPRET`` asks for now: Triton fixes the mode when a kernel is decorated, so the
    modules are re-imported when the variable changed since their first import. Cached per mode
    (this runs on every loss call)."""
    cached = _NAMESPACES.get(_interpret_requested())
    if cached is not None:
        return cached
    _import_kernels_package()
    mods = {name: importlib.import_module(f"radi_fast.kernels.{name}") for name in _KERNEL_MODULES}
    from triton.runtime.interpreter import InterpretedFunction

    interpreted = isinstance(mods["sinkhorn"].sinkhorn_row_sums_kernel, InterpretedFunction)
    if interpreted != _interpret_requested():
        try:  # Triton >= 3.4 caches the variable in its knobs
            from triton import knobs

            knobs.runtime.interpret = _interpret_requested()
        except (ImportError, AttributeError):
            pass
        for name in _KERNEL_MODULES:
            mods[name] = importlib.reload(mods[name])
    namespace = _NamespaceOfKernels(mods)
    _NAMESPACES[_interpret_requested()] = namespace
    return namespace


class _NamespaceOfKernels:
    def __init__(self, mods):
        self.lam = mods["pairwise_stats"].pairwise_lam_kernel
        self.points = mods["pairwise_stats"].pairwise_points_kernel
        self.row_sums = mods["sinkhorn"].sinkhorn_row_sums_kernel
        self.update = mods["sinkhorn"].sinkhorn_update_kernel
        self.loss = mods["margin_ranking"].margin_ranking_kernel
        self.pair_uniform = mods["margin_ranking"].pair_uniform_kernel


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class TritonConfig:
    """Tile sizes and launch parameters. ``sink_*``: Sinkhorn row-sum kernel (its update kernel
    uses the same tiles); ``loss_*``: eq. 4 kernel (``loss_warps`` for "ot", whose tiles come from
    tensor-core products, ``loss_warps_other`` for the other margin modes); ``stats_bk``: answers
    per statistics program.

    ``sink_acc``: accumulate ``2^x`` per pair and reduce once per program (more registers) rather
    than reducing each tile. ``sink_split``: column shares per row block (0: :func:`choose_split`
    from the SM count and ``split_ctas_per_sm``, the row-sum programs one SM holds at once, to fill
    the last wave). ``shift_lo_log2``, ``shift_hi_log2``: the window of row sums the shifted pass
    accepts (a narrow one forces the online fallback: tests). ``check_every``: host look at the
    Sinkhorn stopping flags every this many iterations.
    Overridable with ``RADI_FAST_TRITON_CONFIG="sink_bm=64,sink_bn=64,sink_warps=4"``.
    """

    sink_bm: int = 128
    sink_bn: int = 128
    sink_warps: int = 8
    sink_stages: int = 2
    sink_acc: bool = False
    sink_split: int = 0
    split_ctas_per_sm: int = 2
    shift_lo_log2: int = -60
    shift_hi_log2: int = 100
    loss_bm: int = 64
    loss_bn: int = 64
    loss_warps: int = 4
    loss_warps_other: int = 8
    loss_stages: int = 2
    stats_bk: int = 64
    check_every: int = 4


# the interpreter's cost is per tile op, not per element: large tiles (the tests cover small ones)
INTERPRETER_CONFIG = TritonConfig(sink_bm=128, sink_bn=128, sink_warps=4, sink_stages=1, loss_bm=128, loss_bn=128,
                                  stats_bk=128)


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


def point_lanes(T: int) -> int:
    """TP: the lanes of an augmented point, ``[y (T), p, q, 1]`` padded to a power of two >= 16
    (the K of a TF32 tensor-core product is a multiple of 8)."""
    return max(16, 1 << (T + 2).bit_length())


def padded_answers(K: int, cfg: TritonConfig) -> int:
    """KP: K rounded up to a whole number of every kernel's tiles (all powers of two)."""
    q = max(cfg.sink_bm, cfg.sink_bn, cfg.loss_bm, cfg.loss_bn, cfg.stats_bk)
    return triton_cdiv(K, q) * q


# ----------------------------------------------------------------------------- stages
@dataclass
class TritonProblem:
    """Teacher-side quantities on the top-k answers (``K = max_b K_b``), compute dtype.

    ``K = min(top_k, N)`` (known without a host sync; samples with fewer valid answers are
    padded). order: [B, K] answer ids in teacher order; valid: [B, K]; n_valid: [B] int64 K_b;
    zb, zs: [B, KP, TP] augmented points ``[y, p, q, 1]`` (fp32: ``Z = zb + zs`` split for
    3xTF32; fp64: ``zs is zb``), p and q updated in place by Sinkhorn; hs: [B, K]; lam: [B];
    tie_lo, tie_hi: [B, KP] int32, answer i's teacher tie group ``[tie_lo_i, tie_hi_i)``;
    n_pairs: [B] |R_p|; yt: [B, TP, KP] the points y lane-major (only for the "uncertainty"
    margins, else None).
    """

    order: torch.Tensor
    valid: torch.Tensor
    n_valid: torch.Tensor
    zb: torch.Tensor
    zs: torch.Tensor
    hs: torch.Tensor
    lam: torch.Tensor
    tie_lo: torch.Tensor
    tie_hi: torch.Tensor
    n_pairs: torch.Tensor
    T: int
    dtype: torch.dtype
    yt: Optional[torch.Tensor] = None

    @property
    def split(self) -> bool:
        return self.dtype != torch.float64

    @property
    def padded(self) -> int:
        return self.zb.shape[1]


def teacher_top_k_static(teacher: torch.Tensor, top_k: int, lengths: Optional[torch.Tensor]):
    """``teacher_top_k`` with ``K = min(top_k, N)`` instead of the longest row's count, so no
    host sync: the same ids (stable descending sort, padding last) on every valid position."""
    B, N = teacher.shape
    keys = teacher.float() if teacher.dtype in (torch.float16, torch.bfloat16) else teacher
    K = min(top_k, N)
    if lengths is None:
        n_valid = torch.full((B,), K, dtype=torch.int64, device=keys.device)
    else:
        lengths = lengths.to(keys.device)
        keys = keys.masked_fill(torch.arange(N, device=keys.device)[None, :] >= lengths[:, None], float("-inf"))
        n_valid = lengths.clamp(max=top_k)
    order = torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :K]
    valid = torch.arange(K, device=keys.device)[None, :] < n_valid[:, None]
    return order, valid, n_valid


def tie_groups(teacher_sorted: torch.Tensor, valid: torch.Tensor, n_valid: torch.Tensor):
    """``(tie_lo, tie_hi, n_pairs)`` of scores sorted in descending order: answer i's tie group
    is ``[tie_lo_i, tie_hi_i)`` (so ``t_i > t_j`` iff ``j >= tie_hi_i``) and
    ``|R_p| = sum_i (K_b - tie_hi_i)`` over valid i."""
    ascending = torch.where(valid, -teacher_sorted, torch.full_like(teacher_sorted, float("inf"))).contiguous()
    tie_lo = torch.searchsorted(ascending, ascending, side="left")
    tie_hi = torch.searchsorted(ascending, ascending, side="right")
    n_pairs = ((n_valid[:, None] - tie_hi) * valid).sum(dim=1)
    return tie_lo, tie_hi, n_pairs


def prepare_triton(teacher_mc_logits, teacher_logits, top_k: int, lam: Optional[float], lengths, cfg, ks,
                   lane_major: bool = False):
    dtype = compute_dtype(teacher_mc_logits, teacher_logits)
    mc = teacher_mc_logits.detach()
    B, T, N = mc.shape
    device = mc.device
    teacher = mc.mean(dim=1, dtype=dtype) if teacher_logits is None else teacher_logits.detach().to(dtype)
    order, valid, n_valid = teacher_top_k_static(teacher, top_k, lengths)
    K = order.shape[1]
    KP, TP = padded_answers(K, cfg), point_lanes(T)
    zb = torch.empty(B, KP, TP, dtype=dtype, device=device)
    zs = torch.empty_like(zb) if dtype != torch.float64 else zb
    yt = torch.empty(B, TP, KP, dtype=dtype, device=device) if lane_major else None
    hs = torch.empty(B, K, dtype=dtype, device=device)
    lam_b = torch.empty(B, dtype=dtype, device=device)
    n_valid = n_valid.to(torch.int64).contiguous()
    order = order.contiguous()
    tie = torch.zeros(2, B, KP, dtype=torch.int32, device=device)
    tie_lo, tie_hi, n_pairs = tie_groups(teacher.gather(1, order), valid, n_valid)
    tie[0, :, :K] = tie_lo
    tie[1, :, :K] = tie_hi
    if lam is not None:
        lam_b.fill_(lam)
    if B and K:
        args = (mc, mc.stride(0), mc.stride(1), mc.stride(2), order, order.stride(0), n_valid, lam_b)
        if lam is None:
            ks.lam[(B,)](*args, torch.finfo(dtype).eps, T, TP=TP, BK=cfg.stats_bk, COMPUTE=_tl_dtype(dtype),
                         num_warps=4)
        ks.points[(B, KP // cfg.stats_bk)](*args, zb, zs, zb if yt is None else yt, hs, K, KP, T, TP=TP,
                                           BK=cfg.stats_bk, SPLIT=dtype != torch.float64, COMPUTE=_tl_dtype(dtype),
                                           LANE_MAJOR=yt is not None, num_warps=4)
    return TritonProblem(order=order, valid=valid, n_valid=n_valid, zb=zb, zs=zs, hs=hs, lam=lam_b, tie_lo=tie[0],
                         tie_hi=tie[1], n_pairs=n_pairs, T=T, dtype=dtype, yt=yt)


def choose_split(n_programs: int, slots: int, max_split: int = 4) -> int:
    """Column shares per row block for the Sinkhorn row sums: the count that best fills the last
    wave of ``n_programs * split`` programs over ``slots`` concurrent ones, each extra share
    charged 1.5% (it re-reads its rows and writes one more partial sum)."""
    best, best_eff = 1, 0.0
    for split in range(1, max_split + 1):
        n = n_programs * split
        eff = n / (triton_cdiv(n, slots) * slots) * (1.0 - 0.015 * (split - 1))
        if eff > best_eff + 1e-9:
            best, best_eff = split, eff
    return best


def resolve_split(cfg: TritonConfig, n_programs: int, device: torch.device) -> int:
    """Column shares of the Sinkhorn row sums for this launch."""
    if cfg.sink_split > 0:
        return cfg.sink_split
    if device.type != "cuda":
        return 1
    slots = torch.cuda.get_device_properties(device).multi_processor_count * cfg.split_ctas_per_sm
    return choose_split(n_programs, slots)


def sinkhorn_potentials_triton(p: TritonProblem, max_iter: int, tol: float, cfg, ks):
    """Log-domain Sinkhorn: base-2 potentials ``F = log2 u``, ``G = log2 v`` [B, K] and the number
    of iterations launched (>= the largest per-sample count; frozen samples do no work). Also
    leaves ``p = F - hs`` and ``q = G - hs`` in the lanes of ``p.zb``/``p.zs`` for the loss kernel.

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
    split = resolve_split(cfg, B * rb, device)
    part = torch.empty(split, B, K, dtype=p.dtype, device=device)
    KP, TP = p.padded, p.zb.shape[2]
    common = dict(T=p.T, TP=TP, BM=cfg.sink_bm, BN=cfg.sink_bn, SPLIT=p.split, COMPUTE=_tl_dtype(p.dtype),
                  num_warps=cfg.sink_warps, num_stages=cfg.sink_stages)
    window = dict(SHIFT_LO=2.0 ** cfg.shift_lo_log2, SHIFT_HI=2.0 ** cfg.shift_hi_log2)
    tol_t = torch.full((1,), tol, dtype=p.dtype, device=device)
    asynchronous = device.type == "cuda"
    poll = tol > 0  # tol = 0 runs max_iter: nothing to poll (and nothing that breaks a CUDA graph)
    pending = None
    launched = 0
    for it in range(max_iter):
        prev, nxt = delta[it], delta[it + 1]
        for side, pot in ((0, F), (1, G)):
            ks.row_sums[(B, rb, split)](p.zb, p.zs, p.n_valid, prev, part, tol_t, K, KP, split, G_SIDE=side,
                                        ACC=cfg.sink_acc, **common)
            ks.update[(B, rb)](p.zb, p.zs, p.hs, p.n_valid, pot, part, prev, nxt, tol_t, K, KP, split, G_SIDE=side,
                               WRITE_DELTA=side == 1, **window, **common)
        launched = it + 1
        if launched >= max_iter:
            break
        if pending is not None and (not asynchronous or pending[1].query()):
            if not bool(pending[0]):
                break  # every sample froze at or before the checked iteration
            pending = None
        if poll and pending is None and launched % cfg.check_every == 0:
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


def sorted_student(student_logits: torch.Tensor, p: TritonProblem) -> torch.Tensor:
    """The student's scores in teacher order, [B, KP] in the compute dtype, -inf past each K_b."""
    B, K = p.order.shape
    student = torch.full((B, p.padded), float("-inf"), dtype=p.dtype, device=p.order.device)
    student[:, :K] = student_logits.detach().to(p.dtype).gather(1, p.order).masked_fill_(~p.valid, float("-inf"))
    return student


def margin_loss_triton(student_sorted, p: TritonProblem, margin: float, mode: str, seed: int, cfg, ks):
    """Per-sample eq. 4 losses [B] and the gradient w.r.t. the sorted student scores [B, K].

    ``student_sorted`` is [B, KP] (-inf past each K_b); mode "ot" reads the potentials that
    :func:`sinkhorn_potentials_triton` left in the lanes of Z."""
    B, K = p.hs.shape
    NB = triton_cdiv(K, cfg.loss_bm)
    device = p.hs.device
    loss_part = torch.empty(B, NB, dtype=p.dtype, device=device)
    cnt = torch.zeros(B, K, dtype=torch.int32, device=device)
    rowhash = torch.zeros(B, dtype=torch.int64, device=device)
    ids = torch.zeros(B, p.padded, dtype=torch.int64, device=device)
    ids[:, :K] = p.order
    if mode == "random":
        h0 = int(lowbias32(torch.tensor(seed & MASK32, dtype=torch.int64)))
        rowhash = lowbias32(h0 ^ torch.arange(B, dtype=torch.int64)).to(device)
    warps = cfg.loss_warps if mode == "ot" else cfg.loss_warps_other
    ks.loss[(B, NB)](p.zb, p.zs, p.zb if p.yt is None else p.yt, p.n_valid, p.lam, p.tie_lo, p.tie_hi,
                     student_sorted, ids, rowhash, loss_part, cnt, torch.full((1,), margin, dtype=p.dtype, device=device),
                     K, p.padded, NB, MODE=MODE_IDS[mode],
                     T=p.T,
                     TP=p.zb.shape[2], BM=cfg.loss_bm, BN=cfg.loss_bn, SPLIT=p.split, COMPUTE=_tl_dtype(p.dtype),
                     num_warps=warps, num_stages=cfg.loss_stages)
    n_pairs = p.n_pairs.to(p.dtype)
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
                       None if teacher_logits is None else teacher_logits.to(dtype), top_k, lam, lengths, cfg, ks,
                       lane_major=mode == "uncertainty")
    K = p.order.shape[1]
    if not (B and K):
        return student_logits.new_zeros(B, dtype=dtype), student_logits.new_zeros(B, N, dtype=dtype)
    if mode == "ot":
        sinkhorn_potentials_triton(p, max_iter, tol, cfg, ks)
    loss, grad_k = margin_loss_triton(sorted_student(student_logits, p), p, margin, mode, seed, cfg, ks)
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
