"""What the benchmarks compare: for each case, every provider as a thunk on identical inputs.

A *case* makes its inputs once (``make_*_inputs``); a *provider* turns those inputs into a
zero-argument callable (the timed function) that computes the same quantity as ``radi_fast``:

============  =======================================================================================
case          providers
============  =======================================================================================
radi_p        RADI-P forward + backward (loss and d loss / d student) with the package defaults
              (``lam = "auto"``, margin 1, ``top_k = K``, Sinkhorn until ``max |log v_t - log v_(t-1)|
              <= 1e-5``, at most 100 iterations: every provider uses this stopping test):
              ``radi_fast`` (``radi_pairwise_loss``: Triton on CUDA, the blockwise CPU path on CPU),
              ``literal`` (``radi_pairwise_loss_literal``: eq. 5 as [T, K, K], Algorithm 1 dense in
              the plain domain, eq. 4 dense, one sample at a time), ``dense`` (the best dense PyTorch
              formulation: cdist-style U, ``torch.logsumexp`` Sinkhorn on a materialised [B, K, K],
              dense hinge, autograd backward) and ``dense_compiled`` (the same, its prologue, Sinkhorn
              step and hinge each under ``torch.compile``).
sinkhorn      Algorithm 1 alone, from the centred points z [B, K, T] to the potentials, at one
              fixed ``lam`` and exactly ``SINKHORN_ITERS`` iterations (``tol = 0``) for every
              provider: ``radi_fast``, ``literal`` (``sinkhorn_literal`` per sample on a cdist-style
              U), ``dense`` / ``dense_compiled``, ``pot`` (``ot.bregman.sinkhorn_log``, torch
              backend), ``geomloss`` (its dense "tensorized" softmin) and ``geomloss_keops`` (its
              online KeOps softmin, where pykeops compiles). Each provider builds its own cost from z
              inside the timed function (radi_fast: its K x K kernel; KeOps: nothing).
uncertainty   eq. 5 alone, [B, T, K] -> U [B, K, K]: ``radi_fast`` (``pairwise_uncertainty``),
              ``literal`` (``pairwise_uncertainty_literal``), ``dense`` / ``dense_compiled``
              (``torch.cdist(z, z) ** 2 / T``).
radi_l        RADI-L forward + backward for each listwise loss: ``radi_fast``
              (``radi_listwise_loss``) and ``literal`` (``radi_listwise_loss_literal`` on sub-lists
              drawn by the same sampler, the draw included in the timed function).
============  =======================================================================================

How POT and geomloss are configured (they solve OT between given marginals; Algorithm 1 is
Sinkhorn to ones marginals on the off-diagonal cost):

* cost ``C = U`` (cdist-style, built inside the timed function from z) with the diagonal set to
  ``HUGE_COST`` (``exp(-HUGE_COST / lam) == 0``), marginals ``a = b = 1`` (ones, mass K),
  regularisation ``reg = eps = lam`` (the same float for every provider and sample);
* POT: ``ot.bregman.sinkhorn_log(a, b, C_b, reg=lam, numItermax=n_iter, stopThr=0, log=True,
  warn=False)`` per sample (POT has no batched cost); torch tensors select its torch backend.
  POT also evaluates its marginal error every 10th iteration and returns the [K, K] plan: that is
  what its API does, so it is in its time;
* geomloss: its Sinkhorn loop (``geomloss._legacy.sinkhorn_divergence.sinkhorn_loop``, the one
  ``SamplesLoss`` runs) with a constant temperature list ``eps_list = [lam] * (n_iter - 1)``, no
  debiasing and no last extrapolation: its initial pair of softmins plus ``n_iter - 1`` loop
  steps = ``n_iter`` pairs of K x K log-sum-exps, as the other providers. Its public API cannot
  fix the iteration count (``SamplesLoss`` anneals eps from the diameter; ``geomloss.ot.solve``
  anneals from the cost range). Its iteration is the *symmetrised* Sinkhorn (f and g updated from
  the previous pair, then averaged), so after n_iter steps its potentials are not the same
  iterate as Algorithm 1's (same fixed point).
  ``geomloss``: ``softmin_tensorized`` on the dense cost above (batched);
  ``geomloss_keops``: ``softmin_online_lazytensor`` (KeOps, p = 2) on the points
  ``x = z * sqrt(2 / T)`` so that its cost ``|x_i - x_j|^2 / 2`` is U. The online cost is a
  formula of the points, so the diagonal cannot be masked: it keeps the self-pairs (cost 0);
  the work per iteration is the same.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

import radi_fast
from radi_fast import reference
from radi_fast._backend import triton_available
from radi_fast.ops.pairwise_cpu import prepare_pairwise, solve_sinkhorn

HUGE_COST = 1e9
MC_NOISE = 0.5  # dropout-like noise of the synthetic teacher (std), means ~ N(0, 2^2)
DEFAULT_T = 10
# Sinkhorn case: every provider runs exactly this many iterations (tol = 0); fewer on CPU, where the
# log-domain baselines cost seconds per call (lam = auto converges in 3-5 iterations on these inputs)
SINKHORN_ITERS = int(os.environ.get("RADI_BENCH_SINKHORN_ITERS",
                                    20 if os.environ.get("RADI_BENCH_DEVICE", "auto") != "cpu"
                                    and torch.cuda.is_available() else 5))
RADI_P_MAX_ITER, RADI_P_TOL = 100, 1e-5  # RADI-P case: the package defaults, same stopping test everywhere
MARGIN = 1.0


# ----------------------------------------------------------------------------- devices, memory
def device() -> torch.device:
    want = os.environ.get("RADI_BENCH_DEVICE", "auto")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def memory_budget_bytes(dev: torch.device) -> int:
    """What a provider may allocate before it is skipped (estimated before allocating).

    ``RADI_BENCH_MEM_GB`` overrides. CUDA: 80 % of the free memory. CPU: a third of
    MemAvailable, at most 8 GiB (the machine is shared).
    """
    if os.environ.get("RADI_BENCH_MEM_GB"):
        return int(float(os.environ["RADI_BENCH_MEM_GB"]) * 2**30)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(0.8 * free)
    avail = 8 * 2**30
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(min(avail / 3, 8 * 2**30))


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


# ----------------------------------------------------------------------------- sizes
SIZES = {
    # mode -> batch sizes B and answer-set sizes K: full = the grid of the performance targets (GPU), cpu = what
    # a 2-core CPU runs in minutes, tiny = a smoke run
    "full": {"B": [1, 8, 32], "K": [256, 512, 1024, 2500, 4096]},
    "cpu": {"B": [1, 4], "K": [256, 1024, 2500]},
    "tiny": {"B": [1, 2], "K": [64, 128]},
}


def sizes_mode() -> str:
    """``RADI_BENCH_SIZES`` (full | cpu | tiny); default full on CUDA, cpu on CPU."""
    mode = os.environ.get("RADI_BENCH_SIZES")
    if mode:
        if mode not in SIZES:
            raise ValueError(f"RADI_BENCH_SIZES={mode!r}: expected one of {sorted(SIZES)}")
        return mode
    return "full" if device().type == "cuda" else "cpu"


def shapes(case: str = "default"):
    """(B, K) pairs for a case, small to large, under the current size mode."""
    s = SIZES[sizes_mode()]
    Ks = s["K"]
    if case == "radi_l" and len(Ks) > 2:  # its cost hardly depends on N (a 110-answer sub-list)
        Ks = [Ks[0], Ks[2], Ks[-1]]
    if case == "sinkhorn_small_lam":  # the log-domain regime, at the largest shape only
        return [(s["B"][-1], Ks[-1])]
    if case in ("sinkhorn", "uncertainty") and sizes_mode() == "cpu":
        # the dense baselines cost seconds per call here: the K sweep at B=1, plus the headline shape
        return [(s["B"][0], K) for K in Ks] + [(s["B"][-1], Ks[-1])]
    if case == "radi_l" and sizes_mode() == "cpu":  # its cost hardly depends on N: the paper's N only
        return [(B, Ks[-1]) for B in s["B"]]
    return [(B, K) for B in s["B"] for K in Ks]


def compiled_batch_sizes():
    """torch.compile specialises batch size 1 vs > 1; on CPU a compile costs ~30-60 s, so the
    compiled dense providers run at the largest batch only (``RADI_BENCH_COMPILE_ALL=1``: every B)."""
    Bs = SIZES[sizes_mode()]["B"]
    if device().type == "cuda" or os.environ.get("RADI_BENCH_COMPILE_ALL") == "1":
        return set(Bs)
    return {max(Bs)}


_INPUTS: Dict[tuple, Any] = {}
REFERENCE_OUTPUTS: Dict[tuple, Any] = {}


def cached_inputs(key: tuple, make: Callable[[], "Inputs"]) -> "Inputs":
    """One live input set at a time (the previous one, and radi_fast's output on it, are freed
    when the key changes); the tests are ordered shape-major, provider-minor."""
    if key not in _INPUTS:
        _INPUTS.clear()
        REFERENCE_OUTPUTS.clear()
        import gc

        gc.collect()
        _INPUTS[key] = make()
    return _INPUTS[key]


def params(case: str, names: Optional[List[str]] = None):
    """pytest parameters (B, K, provider), shape-major so inputs are built once per shape."""
    names = names or provider_names(case)
    out = [(B, K, n) for B, K in shapes(case) for n in names]
    return out, [f"B{B}-K{K}-{n}" for B, K, n in out]


# ----------------------------------------------------------------------------- inputs
def make_mc(B: int, T: int, K: int, dev: torch.device, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Teacher MC-dropout logits [B, T, K]: answer means ~ N(0, 4) plus noise of std MC_NOISE."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(B, 1, K, generator=g) * 2
    noise = torch.randn(B, T, K, generator=g) * MC_NOISE
    return (mean + noise).to(device=dev, dtype=dtype)


def make_student(B: int, K: int, dev: torch.device, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, K, generator=g) * 2).to(device=dev, dtype=dtype).requires_grad_(True)


@dataclass
class Inputs:
    """One case at one shape: the tensors every provider reads, and the settings."""

    case: str
    B: int
    K: int
    T: int
    dev: torch.device
    tensors: Dict[str, Any]
    settings: Dict[str, Any] = field(default_factory=dict)


def pairwise_inputs(B: int, K: int, T: int = DEFAULT_T, dev: Optional[torch.device] = None) -> Inputs:
    dev = dev or device()
    return Inputs("radi_p", B, K, T, dev, {"mc": make_mc(B, T, K, dev), "student": make_student(B, K, dev)},
                  {"lam": "auto", "n_iter": RADI_P_MAX_ITER, "tol": RADI_P_TOL, "margin": MARGIN, "top_k": K})


def sinkhorn_inputs(B: int, K: int, T: int = DEFAULT_T, dev: Optional[torch.device] = None,
                    lam_factor: float = 1.0) -> Inputs:
    """Points z [B, K, T] (teacher order, centred) and ``lam = lam_factor * mean off-diagonal U``
    over the batch (one float for every sample and provider)."""
    dev = dev or device()
    mc = make_mc(B, T, K, dev)
    p = prepare_pairwise(mc, None, K, None, None)  # auto lam per sample, only to pick a scale
    lam = float(p.lam.mean()) * lam_factor
    p = prepare_pairwise(mc, None, K, lam, None)
    return Inputs("sinkhorn", B, K, T, dev, {"mc": mc, "problem": p, "z": p.points},
                  {"lam": lam, "lam_factor": lam_factor, "n_iter": SINKHORN_ITERS, "tol": 0.0})


def uncertainty_inputs(B: int, K: int, T: int = DEFAULT_T, dev: Optional[torch.device] = None) -> Inputs:
    dev = dev or device()
    return Inputs("uncertainty", B, K, T, dev, {"mc": make_mc(B, T, K, dev)}, {})


def listwise_inputs(B: int, K: int, loss: str, dev: Optional[torch.device] = None, hot: int = 100,
                    cold: int = 10) -> Inputs:
    """RADI-L on N = K answers (teacher logits = mean of make_mc's passes), the paper's hot 100 / cold 10."""
    dev = dev or device()
    teacher = make_mc(B, 2, K, dev).mean(1)
    return Inputs("radi_l", B, K, 0, dev, {"teacher": teacher, "student": make_student(B, K, dev)},
                  {"loss": loss, "hot": min(hot, K - 1), "cold": min(cold, K - min(hot, K - 1)), "sampling": "zipf",
                   "alpha": 1.0})


# ----------------------------------------------------------------------------- dense PyTorch
# What a careful user writes with dense tensors. The Sinkhorn loop stays in Python (a data-
# dependent stop for RADI-P); under torch.compile each piece below is compiled on its own:
# the prologue, one Sinkhorn step and the hinge (the pieces a user would compile; unrolling
# 100 iterations into one graph takes minutes to compile).
def cdist_u(z: torch.Tensor) -> torch.Tensor:
    """U [B, K, K] from the centred points z [B, K, T], cdist-style: ``|z_i - z_j|^2 / T``."""
    return torch.cdist(z, z).square() / z.shape[-1]


def centred_points(mc: torch.Tensor) -> torch.Tensor:
    return (mc - mc.mean(1, keepdim=True)).transpose(1, 2)


def dense_log_kernel(U: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """-U/lam with -inf on the diagonal, [B, K, K]."""
    K = U.shape[-1]
    eye = torch.eye(K, dtype=torch.bool, device=U.device)
    return (-U / lam[:, None, None]).masked_fill(eye, float("-inf"))


def dense_prologue(mc: torch.Tensor):
    """Teacher order, U on the sorted answers, lam = mean off-diagonal U: (log kernel, order, sorted teacher)."""
    B, T, K = mc.shape
    teacher = mc.mean(1)
    order = torch.sort(teacher, dim=1, descending=True, stable=True).indices
    ts = teacher.gather(1, order)
    gathered = mc.gather(2, order[:, None, :].expand(B, T, K))
    U = cdist_u(centred_points(gathered))
    lam = U.sum(dim=(1, 2)) / (K * (K - 1))
    return dense_log_kernel(U, lam), order, ts


def dense_step(logk: torch.Tensor, g: torch.Tensor):
    """One Algorithm 1 iteration in the log domain: f = -lse_j(logk + g), g = -lse_i(logk + f)."""
    f = -torch.logsumexp(logk + g[:, None, :], dim=2)
    g = -torch.logsumexp(logk + f[:, :, None], dim=1)
    return f, g


def dense_hinge(student, order, ts, logk, f, g, margin: float):
    """Eq. 4 with M = margin * W over the teacher-ordered pairs / their number, batch mean."""
    W = torch.exp(logk + f[:, :, None] + g[:, None, :])
    s = student.gather(1, order)
    pairs = ts[:, :, None] > ts[:, None, :]
    hinge = torch.relu(margin * W - (s[:, :, None] - s[:, None, :]))
    per_sample = torch.where(pairs, hinge, torch.zeros((), dtype=hinge.dtype, device=hinge.device)).sum(dim=(1, 2))
    return (per_sample / pairs.sum(dim=(1, 2)).clamp(min=1)).mean()


def dense_cost(z: torch.Tensor, lam: float) -> torch.Tensor:
    U = cdist_u(z)
    return dense_log_kernel(U, U.new_full((U.shape[0],), lam))


def dense_uncertainty(mc: torch.Tensor) -> torch.Tensor:
    return cdist_u(centred_points(mc))


DENSE_FUNCTIONS = {"prologue": dense_prologue, "step": dense_step, "hinge": dense_hinge, "cost": dense_cost,
                   "uncertainty": dense_uncertainty}


def dense_fn(name: str, use_compile: bool):
    return compiled(name) if use_compile else DENSE_FUNCTIONS[name]


@functools.lru_cache(maxsize=None)
def compiled(name: str):
    """torch.compile'd dense pieces (one compiled object each; dynamic shapes, so K does not recompile)."""
    return torch.compile(DENSE_FUNCTIONS[name], dynamic=True)


def dense_sinkhorn(logk: torch.Tensor, n_iter: int, tol: float = 0.0, step=dense_step):
    """Algorithm 1 (log domain) from g = 0: ``n_iter`` steps, or until ``max |g_t - g_{t-1}| <= tol``
    for every sample (the package's stopping test, batch-wide)."""
    B, K, _ = logk.shape
    f = logk.new_zeros(B, K)
    g = logk.new_zeros(B, K)
    for _ in range(n_iter):
        f, g_new = step(logk, g)
        done = tol > 0 and float((g_new - g).abs().amax()) <= tol
        g = g_new
        if done:
            break
    return f, g


def dense_radi_p_loss(student: torch.Tensor, mc: torch.Tensor, max_iter: int, tol: float, margin: float,
                      use_compile: bool = False) -> torch.Tensor:
    """RADI-P on all K answers, dense: sort by the teacher, U, lam = mean off-diagonal U, Sinkhorn,
    W, hinge over the teacher-ordered pairs divided by their number, batch mean."""
    with torch.no_grad():
        logk, order, ts = dense_fn("prologue", use_compile)(mc)
        f, g = dense_sinkhorn(logk, max_iter, tol, dense_fn("step", use_compile))
    return dense_fn("hinge", use_compile)(student, order, ts, logk, f, g, margin)


# ----------------------------------------------------------------------------- providers
@dataclass
class Provider:
    name: str
    build: Callable[[Inputs], Callable[[], Any]]
    skip: Callable[[Inputs], Optional[str]] = lambda inp: None
    compiled: bool = False  # compile time excluded by an extra warm-up call
    note: str = ""


def _grad_thunk(loss_fn: Callable[[], torch.Tensor], student: torch.Tensor, dev: torch.device):
    def run():
        loss = loss_fn()
        (grad,) = torch.autograd.grad(loss, student)
        sync(dev)
        return loss.detach(), grad

    return run


def _literal_pairwise_bytes(inp: Inputs) -> int:
    """Peak of radi_pairwise_loss_literal: per sample D, D - mean and its square ([T, K, K] each),
    ~6 K x K Sinkhorn / hinge temporaries; autograd keeps ~4 K x K per sample until backward."""
    K, T, B = inp.K, inp.T, inp.B
    return 4 * (3 * T * K * K + (6 + 4 * B) * K * K)


def _dense_bytes(inp: Inputs, per_sample_kk: int) -> int:
    return 4 * per_sample_kk * inp.B * inp.K * inp.K


def _over_budget(estimate: Callable[[Inputs], int], what: str):
    def skip(inp: Inputs) -> Optional[str]:
        need, budget = estimate(inp), memory_budget_bytes(inp.dev)
        if need > budget:
            return f"{what} would need ~{fmt_bytes(need)} (> budget {fmt_bytes(budget)}) at B={inp.B}, K={inp.K}"
        return None

    return skip


# RADI-P forward + backward -------------------------------------------------------------------
def _radi_p_radi_fast(inp: Inputs):
    t, s = inp.tensors, inp.settings
    return _grad_thunk(lambda: radi_fast.radi_pairwise_loss(
        t["student"], t["mc"], None, margin=s["margin"], lam="auto", top_k=s["top_k"], max_iter=s["n_iter"],
        tol=s["tol"]), t["student"], inp.dev)


def _radi_p_literal(inp: Inputs):
    t, s = inp.tensors, inp.settings
    return _grad_thunk(lambda: reference.radi_pairwise_loss_literal(
        t["student"], t["mc"], None, margin=s["margin"], lam="auto", top_k=s["top_k"], max_iter=s["n_iter"],
        tol=s["tol"]), t["student"], inp.dev)


def _radi_p_dense(inp: Inputs, use_compile: bool = False):
    t, s = inp.tensors, inp.settings
    return _grad_thunk(lambda: dense_radi_p_loss(t["student"], t["mc"], s["n_iter"], s["tol"], s["margin"],
                                                 use_compile), t["student"], inp.dev)


RADI_P_PROVIDERS = [
    Provider("radi_fast", _radi_p_radi_fast),
    Provider("literal", _radi_p_literal, _over_budget(_literal_pairwise_bytes, "the literal reference")),
    Provider("dense", _radi_p_dense, _over_budget(lambda i: _dense_bytes(i, 12), "dense PyTorch")),
    Provider("dense_compiled", functools.partial(_radi_p_dense, use_compile=True),
             _over_budget(lambda i: _dense_bytes(i, 12), "dense PyTorch (compiled)"), compiled=True),
]


# Sinkhorn alone -------------------------------------------------------------------------------
def _sinkhorn_radi_fast(inp: Inputs):
    t, s = inp.tensors, inp.settings
    if inp.dev.type == "cuda" and triton_available():
        from radi_fast.ops.pairwise_triton import sinkhorn_log_potentials_triton

        def run_triton():
            f, g, _, _, _ = sinkhorn_log_potentials_triton(t["mc"], None, s["lam"], top_k=inp.K, max_iter=s["n_iter"],
                                                        tol=0.0)
            sync(inp.dev)
            return f, g

        return run_triton
    p = t["problem"]

    def run():
        out = solve_sinkhorn(p, s["n_iter"], 0.0)[:2]  # the CPU path, batch chunked as the loss does
        sync(inp.dev)
        return out

    return run


def _sinkhorn_literal(inp: Inputs):
    z, s = inp.tensors["z"], inp.settings

    def run():
        out = []
        for b in range(z.shape[0]):
            U = cdist_u(z[b:b + 1])[0]
            out.append(reference.sinkhorn_literal(U, s["lam"], s["n_iter"], 0.0))
        sync(inp.dev)
        return out

    return run


def _sinkhorn_dense(inp: Inputs, use_compile: bool = False):
    z, s = inp.tensors["z"], inp.settings
    cost, step = dense_fn("cost", use_compile), dense_fn("step", use_compile)

    def run():
        out = dense_sinkhorn(cost(z, s["lam"]), s["n_iter"], 0.0, step)
        sync(inp.dev)
        return out

    return run


def masked_cost(z: torch.Tensor) -> torch.Tensor:
    """C = U with HUGE_COST on the diagonal, [B, K, K] (the OT libraries' view of Algorithm 1)."""
    U = cdist_u(z)
    return U.masked_fill_(torch.eye(U.shape[-1], dtype=torch.bool, device=U.device), HUGE_COST)


def _sinkhorn_pot(inp: Inputs):
    import ot

    z, s = inp.tensors["z"], inp.settings
    K = z.shape[1]
    ones = torch.ones(K, dtype=z.dtype, device=z.device)

    def run():
        out = []
        for b in range(z.shape[0]):
            M = masked_cost(z[b:b + 1])[0]
            _, log = ot.bregman.sinkhorn_log(ones, ones, M, reg=s["lam"], numItermax=s["n_iter"], stopThr=0.0,
                                             log=True, warn=False)
            out.append((log["log_u"], log["log_v"]))
        sync(inp.dev)
        return out

    return run


def _geomloss_loop(softmin, cost_xy, B: int, K: int, like: torch.Tensor, lam: float, n_iter: int):
    from geomloss._legacy.sinkhorn_divergence import sinkhorn_loop

    zeros = like.new_zeros(B, K)  # log of the ones marginals
    _, _, g_ab, f_ba = sinkhorn_loop(softmin, zeros, zeros, None, None, cost_xy, cost_xy, [lam] * (n_iter - 1), None,
                                     debias=False, last_extrapolation=False)
    return f_ba, g_ab


def _sinkhorn_geomloss(inp: Inputs):
    from geomloss._legacy.sinkhorn_samples import softmin_tensorized

    z, s = inp.tensors["z"], inp.settings
    B, K = z.shape[0], z.shape[1]

    def run():
        C = masked_cost(z)  # symmetric: C_xy = C_yx
        out = _geomloss_loop(softmin_tensorized, C, B, K, z, s["lam"], s["n_iter"])
        sync(inp.dev)
        return out

    return run


@functools.lru_cache(maxsize=None)
def keops_status() -> Optional[str]:
    """None when geomloss's KeOps backend works here, else why not."""
    try:
        import pykeops  # noqa: F401
        from geomloss._legacy.sinkhorn_samples import softmin_online_lazytensor

        x = torch.randn(1, 8, 3)
        softmin_online_lazytensor(1.0, (x, x), torch.zeros(1, 8), p=2)
    except Exception as exc:  # pykeops missing or its compiler failed
        return f"geomloss online (KeOps) unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return None


def _sinkhorn_geomloss_keops(inp: Inputs):
    from geomloss._legacy.sinkhorn_samples import softmin_online_lazytensor

    z, s = inp.tensors["z"], inp.settings
    B, K, T = z.shape
    x = (z * math.sqrt(2.0 / T)).contiguous()  # |x_i - x_j|^2 / 2 = U_ij
    softmin = functools.partial(softmin_online_lazytensor, p=2)

    def run():
        out = _geomloss_loop(softmin, (x, x), B, K, z, s["lam"], s["n_iter"])
        sync(inp.dev)
        return out

    return run


def _pot_status(inp: Inputs) -> Optional[str]:
    try:
        import ot  # noqa: F401
    except ImportError:
        return "POT not installed (pip install pot)"
    return None


def _geomloss_status(inp: Inputs) -> Optional[str]:
    try:
        import geomloss  # noqa: F401
    except ImportError:
        return "geomloss not installed (pip install geomloss)"
    return _over_budget(lambda i: _dense_bytes(i, 4), "geomloss tensorized")(inp)


def _keops_skip(inp: Inputs) -> Optional[str]:
    reason = _geomloss_status(inp) or keops_status()
    if reason is None and inp.dev.type == "cpu" and inp.B > 1 and os.environ.get("RADI_BENCH_KEOPS_ALL") != "1":
        reason = ("KeOps' CPU backend runs at B=1 only here (~2 s per sample and iteration pair at K=2500; "
                  "RADI_BENCH_KEOPS_ALL=1 runs every B)")
    return reason


SINKHORN_PROVIDERS = [
    Provider("radi_fast", _sinkhorn_radi_fast),
    Provider("literal", _sinkhorn_literal, _over_budget(lambda i: 4 * 6 * i.K * i.K, "the literal Sinkhorn")),
    Provider("dense", _sinkhorn_dense, _over_budget(lambda i: _dense_bytes(i, 5), "dense PyTorch")),
    Provider("dense_compiled", functools.partial(_sinkhorn_dense, use_compile=True),
             _over_budget(lambda i: _dense_bytes(i, 5), "dense PyTorch (compiled)"), compiled=True),
    Provider("pot", _sinkhorn_pot, lambda i: _pot_status(i) or _over_budget(lambda j: 4 * 5 * j.K * j.K, "POT")(i)),
    Provider("geomloss", _sinkhorn_geomloss, _geomloss_status),
    Provider("geomloss_keops", _sinkhorn_geomloss_keops, _keops_skip, compiled=True),
]


# uncertainty alone ----------------------------------------------------------------------------
def _unc_radi_fast(inp: Inputs):
    mc = inp.tensors["mc"]

    def run():
        U = radi_fast.pairwise_uncertainty(mc)
        sync(inp.dev)
        return U

    return run


def _unc_literal(inp: Inputs):
    mc = inp.tensors["mc"]

    def run():
        U = torch.stack([reference.pairwise_uncertainty_literal(mc[b]) for b in range(mc.shape[0])])
        sync(inp.dev)
        return U

    return run


def _unc_dense(inp: Inputs, use_compile: bool = False):
    mc = inp.tensors["mc"]
    fn = dense_fn("uncertainty", use_compile)

    def run():
        U = fn(mc)
        sync(inp.dev)
        return U

    return run


UNCERTAINTY_PROVIDERS = [
    Provider("radi_fast", _unc_radi_fast),
    Provider("literal", _unc_literal,
             _over_budget(lambda i: 4 * (3 * i.T * i.K * i.K + i.B * i.K * i.K), "the literal eq. 5")),
    Provider("dense", _unc_dense, _over_budget(lambda i: _dense_bytes(i, 3), "dense PyTorch")),
    Provider("dense_compiled", functools.partial(_unc_dense, use_compile=True),
             _over_budget(lambda i: _dense_bytes(i, 3), "dense PyTorch (compiled)"), compiled=True),
]


# RADI-L forward + backward -------------------------------------------------------------------
def _radi_l_radi_fast(inp: Inputs):
    t, s = inp.tensors, inp.settings

    def loss():
        gen = torch.Generator(device=inp.dev).manual_seed(0)
        return radi_fast.radi_listwise_loss(t["student"], t["teacher"], hot=s["hot"], cold=s["cold"],
                                            sampling=s["sampling"], alpha=s["alpha"], loss=s["loss"], generator=gen)

    return _grad_thunk(loss, t["student"], inp.dev)


def _radi_l_literal(inp: Inputs):
    from radi_fast.listwise import draw_sublists, stlistnet_uniforms

    t, s = inp.tensors, inp.settings

    def loss():
        gen = torch.Generator(device=inp.dev).manual_seed(0)
        ids, _ = draw_sublists(t["teacher"], s["hot"], s["cold"], s["sampling"], s["alpha"], gen)
        uniforms = stlistnet_uniforms(ids.shape, gen, inp.dev).tolist() if s["loss"] == "stlistnet" else None
        return reference.radi_listwise_loss_literal(t["student"], t["teacher"], ids.tolist(), s["loss"],
                                                    uniforms=uniforms)

    return _grad_thunk(loss, t["student"], inp.dev)


RADI_L_PROVIDERS = [
    Provider("radi_fast", _radi_l_radi_fast),
    Provider("literal", _radi_l_literal),
]

PROVIDERS: Dict[str, List[Provider]] = {
    "radi_p": RADI_P_PROVIDERS,
    "sinkhorn": SINKHORN_PROVIDERS,
    "uncertainty": UNCERTAINTY_PROVIDERS,
    "radi_l": RADI_L_PROVIDERS,
}


# the small-lam (log-domain) Sinkhorn comparison: radi_fast against the log-domain baselines that matter
SMALL_LAM_PROVIDERS = ["radi_fast", "literal", "dense", "pot"]


def provider_names(case: str) -> List[str]:
    return [p.name for p in PROVIDERS[case]]


def get_provider(case: str, name: str) -> Provider:
    for p in PROVIDERS[case]:
        if p.name == name:
            return p
    raise KeyError(f"no provider {name!r} for case {case!r}")


# ----------------------------------------------------------------------------- agreement checks
def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def agreement(case: str, name: str, out, ref_out) -> Optional[float]:
    """Max relative difference of a provider's result from radi_fast's, where they compute the
    same iterate (None where the outputs are not comparable, e.g. geomloss's symmetrised iterates)."""
    try:
        if case in ("radi_p", "radi_l"):
            a, b = out[0].double(), ref_out[0].double()
            ga, gb = out[1].double(), ref_out[1].double()
            return max(float((a - b).abs() / b.abs().clamp(min=1e-12)),
                       float((ga - gb).abs().max() / gb.abs().max().clamp(min=1e-12)))
        if case == "uncertainty":
            a, b = out.double(), ref_out.double()
            return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
        if case == "sinkhorn":
            # d_i = log u_i + log v_i is gauge free and, for a symmetric kernel, does not depend on
            # which half-step comes first (POT updates v first)
            f_ref, g_ref = ref_out
            d_ref = (f_ref + g_ref).double()
            if name in ("dense", "dense_compiled"):
                d = (out[0] + out[1]).double()
            elif name == "pot":
                d = torch.stack([(u + v) for u, v in out]).double()
            else:
                return None
            return float((d - d_ref).abs().max() / d_ref.abs().max().clamp(min=1e-12))
    except Exception:
        return None
    return None
