"""RADI-P benchmark on a CUDA GPU: speed, memory and the hardware limit, written to JSON.

Forward + backward of ``radi_pairwise_loss`` at B = 32, T = 10, K = 2500 (N = K, top_k = 2500),
20 Sinkhorn iterations (``max_iter=20, tol=0``), fp32, ``margin_mode="ot"``, against

* ``literal``: ``radi_fast.reference.radi_pairwise_loss_literal`` (eq. 5 as [T, K, K], Algorithm 1
  dense in the plain domain, eq. 4 dense; one sample at a time, as the reference is written);
* ``dense``: the best dense PyTorch formulation: ``torch.cdist`` for U on a materialised
  [B, K, K], ``torch.logsumexp`` Sinkhorn in the log domain, dense hinge, autograd backward;
* ``dense_compiled``: the same function under ``torch.compile`` (inductor).

Timing: CUDA events around each call, ``--warmup`` untimed calls first (compilation included
there), median of ``--rounds``. Peak extra memory: ``torch.cuda.max_memory_allocated`` minus the
memory allocated before the call (inputs excluded, outputs and gradients included).
The host's cost of one Triton launch and of one small PyTorch op is measured
(``host_us_per_launch``); with the package defaults (lam auto, tol 1e-5) the same forward +
backward is also timed at B = 32 and 128 (K = 2500, fp32) and B = 256, N = 4096 (bf16, top 2500),
and at the benchmark shape with the stopping flag looked at every 1, 2, 4 (the default), 8 iterations,
with ``poll_ahead`` 0, 4 (the default), 8, and once with ``direct_launch=0`` (every Sinkhorn launch
through Triton's JIT dispatch).

Sinkhorn: the time of one iteration (two half-step kernels) is ``(t(20 it) - t(2 it)) / 18`` of
the Sinkhorn stage alone; one iteration evaluates ``2 sum_b K_b (K_b - 1)`` exponentials (4e8 at
the benchmark shape), and the exp roofline is that count over ``SMs * 16 / clock`` (16 MUFU.EX2
per SM per clock on sm_90), at the maximum SM clock reported by nvidia-smi (and at the clock
read right after the run). A small sweep of Sinkhorn tile configurations is timed the same way.

``--integration`` runs, instead of the benchmark, what a trainer needs of the losses,
each call recorded and turned into a TARGET line: a forward + backward of RADI-P (``tol=0``),
RADI-L, their masked forms and the classification loss under
``torch.cuda.set_sync_debug_mode("error")``; a CUDA-graph capture of it whose replays equal
eager (same and new input values); ``torch.compile(fullgraph=True)`` with inductor equal to
eager. It writes ``integration_<device>.json``.

``--dry-run`` runs every code path on the CPU (Triton interpreter, tiny sizes, no CUDA timing or
memory; with ``--integration``: the compile checks under aot_eager): a smoke test of this script
on a machine without a GPU.

Writes ``radi_p_bench_<device>.json`` into every ``--out`` folder.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MUFU_EX2_PER_SM_PER_CLOCK = 16
# per-iteration Sinkhorn time of other configurations (TritonConfig overrides); the first, the
# shifted pass the symmetric one replaced, also runs with --no-sweep
SWEEP = ("sink_sym=0", "sink_split=1", "sink_split=2", "sym_stages=3", "sym_ctas_per_sm=3",
         "sym_block=128,sym_rows=64,sym_ctas_per_sm=2", "sym_block=128,sym_rows=128,sym_warps=8,sym_ctas_per_sm=1",
         "sink_sym=0,sink_split=1", "sink_sym=0,sink_split=2", "sink_sym=0,sink_split=3", "sink_sym=0,sink_acc=1",
         "sink_sym=0,sink_bm=64,sink_bn=64,sink_warps=4,sink_stages=3,split_ctas_per_sm=5")
# loss kernel configurations; the first, the ordered kernel the symmetric one replaced, also runs
# with --no-sweep
LOSS_SWEEP = ("loss_sym=0", "loss_stages=3", "loss_bm=128,loss_warps=8", "loss_bm=32,loss_warps=4",
              "loss_sym=0,loss_bm=128,loss_bn=64,loss_warps=8", "loss_sym=0,loss_bm=64,loss_bn=128,loss_warps=4",
              "loss_sym=0,loss_bm=128,loss_bn=128,loss_warps=8", "loss_sym=0,loss_bm=64,loss_bn=32,loss_warps=4")
# the speed targets at the benchmark shape (H100)
TARGET_ITERATION_US = 160.0
STRETCH_ITERATION_US = 95.0
TARGET_FIXED_MS = 4.5
TARGET_DEFAULTS_MS = 1.5
FLASHSINKHORN_ITERATION_US = 2930.0  # FlashSinkhorn 0.4.1, 32 samples one by one, measured on the same H100 type


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--T", type=int, default=10)
    ap.add_argument("--K", type=int, default=2500)
    ap.add_argument("--iters", type=int, default=20, help="Sinkhorn iterations (tol = 0)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--literal-rounds", type=int, default=2, help="rounds for the (slow) literal reference")
    ap.add_argument("--out", action="append", default=None, help="output folder (repeatable)")
    ap.add_argument("--skip-literal", action="store_true")
    ap.add_argument("--skip-compile", action="store_true", help="skip the torch.compile dense baseline")
    ap.add_argument("--no-sweep", action="store_true", help="skip the Sinkhorn tile sweep")
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes: smoke test only")
    ap.add_argument("--integration", action="store_true",
                    help="only the trainer-integration checks (sync-free, CUDA graphs, torch.compile fullgraph)")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.B, args.T, args.K, args.iters = 2, 3, 40, 3
        args.rounds, args.warmup, args.literal_rounds = 1, 0, 1
    return args


# ----------------------------------------------------------------------------- timing
class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def measure(self, fn, warmup, rounds):
        """Median and all rounds of ``fn()`` in milliseconds."""
        import torch

        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(rounds):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return {"median_ms": statistics.median(times), "rounds_ms": times}

    def peak_extra_mb(self, fn):
        if not self.cuda:
            return None
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


# ----------------------------------------------------------------------------- providers
def make_inputs(B, T, K, device, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(B, 1, K, generator=g) * 2
    mc = (mean + 0.5 * torch.randn(B, T, K, generator=g)).to(device)
    student = torch.randn(B, K, generator=g).to(device)
    return student, mc


def dense_loss(student, mc, iters: int, margin: float = 1.0):
    """The best dense PyTorch RADI-P: materialised [B, K, K] U (cdist), log-domain Sinkhorn with
    logsumexp, dense hinge. With top_k >= N the pair set is all answers, so no sort is needed
    (the loss only depends on which pairs the teacher orders)."""
    import torch

    with torch.no_grad():
        T = mc.shape[1]
        teacher = mc.mean(dim=1)
        z = (mc - mc.mean(dim=1, keepdim=True)).transpose(1, 2)
        U = torch.cdist(z, z).pow_(2).div_(T)
        K = U.shape[1]
        lam = U.sum(dim=(1, 2)) / (K * (K - 1))
        C = -U / lam[:, None, None]
        C.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
        f = torch.zeros_like(teacher)
        g = torch.zeros_like(teacher)
        for _ in range(iters):
            f = -torch.logsumexp(C + g[:, None, :], dim=2)
            g = -torch.logsumexp(C + f[:, :, None], dim=1)
        W = torch.exp(C + f[:, :, None] + g[:, None, :])
        ordered = teacher[:, :, None] > teacher[:, None, :]
        n_pairs = ordered.sum(dim=(1, 2)).clamp(min=1)
    hinge = (margin * W - (student[:, :, None] - student[:, None, :])).clamp_min(0) * ordered
    return (hinge.sum(dim=(1, 2)) / n_pairs).mean()


def fwd_bwd(loss_fn, student):
    s = student.detach().requires_grad_(True)
    loss = loss_fn(s)
    loss.backward()
    return float(loss.detach()), s.grad


def launch_host_us(PT, p, cfg, timer, n=200):
    """Host microseconds to issue one Sinkhorn half-step launch (every sample frozen, so the
    device exits at once and never holds the host back) and one small PyTorch op (an in-place
    add on [B, K]): what a host-bound call pays per launch. The symmetric half-step (the default
    path's) both as the Sinkhorn loop relaunches it (its compiled kernel's launcher) and through
    Triton's JIT dispatch (``direct_launch=0``)."""
    import torch

    B, K = p.hs.shape
    pot = torch.zeros(B, K, dtype=p.dtype, device=p.hs.device)
    frozen = torch.zeros(2, B, dtype=p.dtype, device=p.hs.device)  # prev_delta 0 <= tol 0: exit
    tol = torch.zeros(1, dtype=p.dtype, device=p.hs.device)
    step = PT.HalfStep(p, cfg, tol, pot)
    sym = PT.HalfStep(p, cfg, tol, pot, symmetric=True, half_steps=1)  # the default path's launch
    jit = PT.HalfStep(p, replace(cfg, direct_launch=False), tol, pot, symmetric=True, half_steps=1)
    out = {}
    for name, fn in (("triton_half_step", lambda: step(0, pot, frozen[0], frozen[1])),
                     ("triton_symmetric_half_step", lambda: sym.symmetric(0, 0, pot, pot, frozen, 0)),
                     ("triton_symmetric_half_step_jit", lambda: jit.symmetric(0, 0, pot, pot, frozen, 0)),
                     ("torch_add_", lambda: pot.add_(0.0))):
        fn()
        timer.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out[name] = (time.perf_counter() - t0) / n * 1e6
        timer.sync()
    return out


def host_ms(loss_fn, student, timer, rounds):
    """Median time the host spends issuing one forward + backward (from an idle device, without
    reading the loss back): when it is close to the synchronised time, the call is host-bound."""
    times = []
    for _ in range(rounds):
        timer.sync()
        t0 = time.perf_counter()
        s = student.detach().requires_grad_(True)
        loss_fn(s).backward()
        times.append((time.perf_counter() - t0) * 1e3)
        timer.sync()
    return statistics.median(times)


# ----------------------------------------------------------------------------- device facts
def nvidia_smi(query):
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        return out[0].strip() if out else None
    except Exception:
        return None


def device_facts(device):
    import torch

    import triton

    facts = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(device=props.name, sm_count=props.multi_processor_count, cuda=torch.version.cuda,
                     capability=f"{props.major}.{props.minor}", memory_gb=round(props.total_memory / 2**30, 1),
                     driver=nvidia_smi("driver_version"), max_sm_clock_mhz=nvidia_smi("clocks.max.sm"))
    else:
        facts.update(device=f"cpu ({platform.processor() or platform.machine()}), Triton interpreter",
                     sm_count=None, max_sm_clock_mhz=None)
    return facts


# ----------------------------------------------------------------------------- benchmark
def sinkhorn_stage(PT, student, mc, iters, cfg, timer, warmup, rounds):
    """Median time (ms) of the Sinkhorn stage alone with ``iters`` iterations."""
    p = PT.prepare_triton(mc, None, 2500, None, None, cfg)
    return timer.measure(lambda: PT.sinkhorn_potentials_triton(p, iters, 0.0, cfg), warmup, rounds), p


def select_device(args):
    """CUDA, or with ``--dry-run`` the CPU under the Triton interpreter (set before radi_fast is
    imported); exits 2 without a CUDA device otherwise."""
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_pairwise.py: no CUDA device (use --dry-run for a CPU smoke test)", file=sys.stderr)
        sys.exit(2)
    return torch.device("cpu" if args.dry_run else "cuda")


def run(args):
    device = select_device(args)
    import torch

    import radi_fast
    from radi_fast import reference as R
    from radi_fast.ops import pairwise_triton as PT
    from radi_fast.ops import triton_config as TC

    timer = Timer(device)
    B, T, K, iters = args.B, args.T, args.K, args.iters
    student, mc = make_inputs(B, T, K, device)
    result = {"benchmark": "RADI-P forward+backward at the benchmark shape", "dry_run": args.dry_run,
              "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "shape": {"B": B, "T": T, "K": K, "N": K, "top_k": 2500, "sinkhorn_iterations": iters, "tol": 0.0,
                        "dtype": "float32", "margin_mode": "ot", "margin": 1.0, "lam": "auto"},
              "timing": f"{'CUDA events' if device.type == 'cuda' else 'perf_counter'}, {args.warmup} warm-up calls, median of {args.rounds} rounds "
                        f"({args.literal_rounds} for the literal reference)",
              **device_facts(device), "providers": {}}
    print(f"device: {result['device']}  B={B} T={T} K={K} iters={iters}", flush=True)

    providers = {
        "radi_fast": lambda s: radi_fast.radi_pairwise_loss(s, mc, margin_mode="ot", max_iter=iters, tol=0.0,
                                                            backend="triton"),
        "dense": lambda s: dense_loss(s, mc, iters),
    }
    if not args.skip_compile:
        compiled = torch.compile(dense_loss, backend="aot_eager" if args.dry_run else "inductor", dynamic=False)
        providers["dense_compiled"] = lambda s: compiled(s, mc, iters)
    if not args.skip_literal:
        providers["literal"] = lambda s: R.radi_pairwise_loss_literal(s, mc, max_iter=iters, tol=0.0)

    reference_loss = None
    for name, fn in providers.items():
        rounds = args.literal_rounds if name == "literal" else args.rounds
        try:
            loss, _ = fwd_bwd(fn, student)  # first call: compiles (Triton JIT, inductor)
            entry = timer.measure(lambda: fwd_bwd(fn, student), args.warmup, rounds)
            entry["peak_extra_mb"] = timer.peak_extra_mb(lambda: fwd_bwd(fn, student))
            entry["loss"] = loss
        except Exception as exc:  # e.g. out of memory for a dense baseline: record, go on
            entry = {"error": repr(exc)[:500]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if name == "radi_fast":
            reference_loss = entry.get("loss")
        if reference_loss is not None and "loss" in entry:
            entry["loss_rel_diff_vs_radi_fast"] = abs(entry["loss"] - reference_loss) / max(abs(reference_loss), 1e-30)
        result["providers"][name] = entry
        print(f"  {name:15s} {json.dumps({k: v for k, v in entry.items() if k != 'rounds_ms'})}", flush=True)

    # stages of the Triton path (forward only), and one Sinkhorn iteration against the exp roofline
    cfg = TC.default_config(device.type != "cuda", torch.float32)
    st_full, p = sinkhorn_stage(PT, student, mc, iters, cfg, timer, args.warmup, args.rounds)
    lo = min(2, max(iters - 1, 1))
    st_lo, _ = sinkhorn_stage(PT, student, mc, lo, cfg, timer, args.warmup, args.rounds)
    per_iter_us = (st_full["median_ms"] - st_lo["median_ms"]) / max(iters - lo, 1) * 1e3
    kb = p.n_valid.double()
    exps = float((2 * kb * (kb - 1)).sum())  # Algorithm 1's: the issue's yardstick, whatever the kernel does
    sink = {"config": cfg.__dict__, "stage_ms": {str(iters): st_full["median_ms"], str(lo): st_lo["median_ms"]},
            "per_iteration_us": per_iter_us, "exps_per_iteration": exps,
            "exps_evaluated_per_iteration": exps / 2 if cfg.sink_sym else exps}
    clock_now = nvidia_smi("clocks.sm") if device.type == "cuda" else None
    for label, mhz in (("max_clock", result.get("max_sm_clock_mhz")), ("clock_after_run", clock_now)):
        try:
            hz = float(mhz) * 1e6
        except (TypeError, ValueError):
            continue
        roof_us = exps / (result["sm_count"] * MUFU_EX2_PER_SM_PER_CLOCK * hz) * 1e6
        sink[f"exp_roofline_us_at_{label}"] = roof_us
        sink[f"fraction_of_exp_roofline_at_{label}"] = roof_us / per_iter_us if per_iter_us > 0 else None
        evaluated = sink["exps_evaluated_per_iteration"] / exps  # the symmetric pass evaluates half
        sink[f"fraction_of_evaluated_exp_roofline_at_{label}"] = (roof_us * evaluated / per_iter_us
                                                                  if per_iter_us > 0 else None)
        sink[f"{label}_mhz"] = float(mhz)
    result["sinkhorn"] = sink
    PT.sinkhorn_potentials_triton(p, iters, 0.0, cfg)
    result["stages_ms"] = {
        "prepare (sort, gather, stats kernels)": timer.measure(
            lambda: PT.prepare_triton(mc, None, 2500, None, None, cfg), args.warmup, args.rounds)["median_ms"],
        f"sinkhorn ({iters} iterations)": st_full["median_ms"],
        "loss kernel (eq. 4 + gradient)": timer.measure(
            lambda: PT.margin_loss_triton(student, p, 1.0, "ot", 0, cfg), args.warmup,
            args.rounds)["median_ms"],
    }
    print(f"  sinkhorn {json.dumps(sink)}", flush=True)
    print(f"  stages {json.dumps(result['stages_ms'])}", flush=True)
    result["host_us_per_launch"] = launch_host_us(PT, PT.prepare_triton(mc, None, 2500, None, None, cfg), cfg, timer)
    print(f"  host us per launch {json.dumps(result['host_us_per_launch'])}", flush=True)

    # Sinkhorn tile sweep (per-iteration time of each configuration)
    sweep = []
    for override in (SWEEP[:1] if args.no_sweep or args.dry_run else SWEEP):
        c = TC.parse_config_override(override, cfg)
        try:
            a, _ = sinkhorn_stage(PT, student, mc, iters, c, timer, 1, args.rounds)
            b, _ = sinkhorn_stage(PT, student, mc, lo, c, timer, 1, args.rounds)
            us = (a["median_ms"] - b["median_ms"]) / max(iters - lo, 1) * 1e3
            sweep.append({"config": override, "per_iteration_us": us})
        except Exception as exc:
            sweep.append({"config": override, "error": repr(exc)[:300]})
        print(f"  sweep {sweep[-1]}", flush=True)
    result["sinkhorn_sweep"] = sweep

    # loss kernel sweep ("ot" margins, final potentials of the run above)
    loss_sweep = []
    for override in (LOSS_SWEEP[:1] if args.no_sweep or args.dry_run else LOSS_SWEEP):
        c = TC.parse_config_override(override, cfg)
        try:
            pc = PT.prepare_triton(mc, None, 2500, None, None, c)
            PT.sinkhorn_potentials_triton(pc, iters, 0.0, c)
            ms = timer.measure(lambda: PT.margin_loss_triton(student, pc, 1.0, "ot", 0, c), 1, args.rounds)["median_ms"]
            loss_sweep.append({"config": override, "ms": ms})
        except Exception as exc:
            loss_sweep.append({"config": override, "error": repr(exc)[:300]})
        print(f"  loss sweep {loss_sweep[-1]}", flush=True)
    result["loss_sweep"] = loss_sweep

    # Sinkhorn schemes at smaller lam: iterations and time of a fwd+bwd to tol 1e-5 (B = 32, K = 2500)
    schemes = []
    mean_u = PT.prepare_triton(mc, None, 2500, None, None, cfg).lam
    for factor in ((1.0,) if args.dry_run else (1.0, 0.3, 0.1, 0.03, 0.01)):
        lam = float(mean_u.mean()) * factor
        for scheme in ("plain", "overrelaxed", "anderson", "scaling"):
            fn = lambda s: radi_fast.radi_pairwise_loss(s, mc, lam=lam, tol=1e-5, max_iter=3000,  # noqa: E731
                                                        sinkhorn=scheme, backend="triton")
            try:
                s0 = student.detach().requires_grad_(True)
                _, info = radi_fast.radi_pairwise_loss(s0, mc, lam=lam, tol=1e-5, max_iter=3000, sinkhorn=scheme,
                                                       backend="triton", return_info=True)
                entry = {"factor": factor, "scheme": scheme, "iterations_max": int(info.iterations.max()),
                         "iterations_mean": float(info.iterations.double().mean()),
                         "ms": timer.measure(lambda: fwd_bwd(fn, student), 1, max(1, args.rounds // 2))["median_ms"]}
            except Exception as exc:
                entry = {"factor": factor, "scheme": scheme, "error": repr(exc)[:300]}
            schemes.append(entry)
            print(f"  schemes {json.dumps(entry)}", flush=True)
    result["sinkhorn_schemes"] = schemes

    # where the time of one call with the defaults goes (CUDA kernels, torch.profiler)
    if device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        fn = lambda s: radi_fast.radi_pairwise_loss(s, mc, backend="triton")  # noqa: E731
        fwd_bwd(fn, student)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                fwd_bwd(fn, student)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60)
        print(table, flush=True)
        result["profile_defaults_3_calls"] = table

    # the package defaults (lam auto, tol 1e-5, max_iter 100)
    defaults = []
    cases = [(B, K, K, torch.float32)] if args.dry_run else [(32, 2500, 2500, torch.float32),
                                                            (128, 2500, 2500, torch.float32),
                                                            (256, 4096, 2500, torch.bfloat16)]
    for b, n, top, dt in cases:
        s_d, mc_d = make_inputs(b, T, n, device, seed=1)
        s_d, mc_d = s_d.to(dt), mc_d.to(dt)
        fn = lambda s: radi_fast.radi_pairwise_loss(s, mc_d, backend="triton", top_k=top)  # noqa: E731
        try:
            fwd_bwd(fn, s_d)
            entry = timer.measure(lambda: fwd_bwd(fn, s_d), args.warmup, args.rounds)
            entry.update(B=b, N=n, top_k=top, dtype=str(dt).replace("torch.", ""),
                         host_median_ms=host_ms(fn, s_d, timer, args.rounds),
                         peak_extra_mb=timer.peak_extra_mb(lambda: fwd_bwd(fn, s_d)))
            # iterations the host launched against those the samples ran: the stopping flag is read
            # asynchronously, so a host that runs ahead of the device launches iterations past the
            # stop (their programs exit at once; each still costs a launch on both sides)
            timer.sync()
            _, _, _, launched, ran = PT.sinkhorn_log_potentials_triton(mc_d, top_k=top)
            entry.update(sinkhorn_launched=int(launched), sinkhorn_iterations_max=int(ran.max()))
        except Exception as exc:
            entry = {"B": b, "N": n, "error": repr(exc)[:300]}
        defaults.append(entry)
        print(f"  defaults {json.dumps({k: v for k, v in entry.items() if k != 'rounds_ms'})}", flush=True)
    result["defaults"] = defaults

    # how often the host looks at the stopping flag: it keeps launching half-steps (for frozen
    # samples: they exit at once, but each costs a launch on the host) until a look lands
    polls = []
    s_d, mc_d = make_inputs(B, T, K, device, seed=1)
    fn = lambda s: radi_fast.radi_pairwise_loss(s, mc_d, backend="triton", top_k=K)  # noqa: E731
    saved = os.environ.get("RADI_FAST_TRITON_CONFIG")
    # (poll_ahead=0: the host never waits for a flag in flight, the behaviour before StopPoll;
    # direct=0: every Sinkhorn launch through Triton's JIT dispatch, the behaviour before DirectLaunch)
    for every, ahead, direct in ((1, 4, 1), (2, 4, 1), (4, 4, 1), (8, 4, 1), (4, 0, 1), (4, 8, 1), (4, 4, 0)):
        os.environ["RADI_FAST_TRITON_CONFIG"] = ",".join(filter(None, [saved, f"check_every={every}",
                                                                       f"poll_ahead={ahead}",
                                                                       f"direct_launch={direct}"]))
        try:
            fwd_bwd(fn, s_d)
            entry = timer.measure(lambda: fwd_bwd(fn, s_d), args.warmup, args.rounds)
            entry.update(check_every=every, poll_ahead=ahead, direct_launch=direct,
                         host_median_ms=host_ms(fn, s_d, timer, args.rounds))
        except Exception as exc:
            entry = {"check_every": every, "poll_ahead": ahead, "direct_launch": direct, "error": repr(exc)[:300]}
        finally:
            if saved is None:
                os.environ.pop("RADI_FAST_TRITON_CONFIG", None)
            else:
                os.environ["RADI_FAST_TRITON_CONFIG"] = saved
        polls.append(entry)
        shown = {k: v for k, v in entry.items() if k != "rounds_ms"}
        print(f"  defaults by check_every, poll_ahead, direct_launch {json.dumps(shown)}", flush=True)
    result["defaults_by_check_every"] = polls

    prov = result["providers"]
    fast = prov.get("radi_fast", {}).get("median_ms")
    if fast:
        result["speedup"] = {name: prov[name]["median_ms"] / fast for name in prov
                             if name != "radi_fast" and "median_ms" in prov[name]}
        best_dense = min((prov[n]["median_ms"] for n in ("dense", "dense_compiled") if "median_ms" in prov.get(n, {})),
                         default=None)
        frac = sink.get("fraction_of_exp_roofline_at_max_clock")
        compiled_ms = prov.get("dense_compiled", {}).get("median_ms")
        literal_ms = prov.get("literal", {}).get("median_ms")
        default_ms = defaults[0].get("median_ms") if defaults else None
        it_us = sink["per_iteration_us"]
        result["targets"] = {
            f"sinkhorn iteration <= {TARGET_ITERATION_US:.0f} us (>= 60% of the MUFU limit)": it_us <= TARGET_ITERATION_US,
            f"stretch: sinkhorn iteration <= {STRETCH_ITERATION_US:.0f} us": it_us <= STRETCH_ITERATION_US,
            f"fwd+bwd, {iters} fixed iterations <= {TARGET_FIXED_MS} ms": fast <= TARGET_FIXED_MS,
            ">= 7.5x dense torch.compile": None if compiled_ms is None else compiled_ms / fast >= 7.5,
            ">= 30x literal": None if literal_ms is None else literal_ms / fast >= 30,
            f"fwd+bwd with defaults <= {TARGET_DEFAULTS_MS} ms": None if default_ms is None else
            default_ms <= TARGET_DEFAULTS_MS,
            "peak extra memory < 64 MB": None if prov["radi_fast"].get("peak_extra_mb") is None else
            prov["radi_fast"]["peak_extra_mb"] < 64,
            ">= 6x FlashSinkhorn per iteration (its 2.93 ms, measured before on an H100)":
                FLASHSINKHORN_ITERATION_US / it_us >= 6 if it_us > 0 else None,
        }
        by = {(r["factor"], r["scheme"]): r for r in result.get("sinkhorn_schemes", []) if "error" not in r}
        for factor, ratio in ((0.1, 0.5), (0.03, 0.25)):  # the Sinkhorn-iterations targets, on the batch's mean
            a, b = by.get((factor, "anderson")), by.get((factor, "plain"))
            if a and b:
                result["targets"][f"anderson mean iterations <= {ratio} x plain's at lam = {factor} x mean U "
                                  f"({a['iterations_mean']:.1f} vs {b['iterations_mean']:.1f})"] = \
                    a["iterations_mean"] <= ratio * b["iterations_mean"]
        shifted = next((r for r in result.get("sinkhorn_sweep", []) if r["config"] == "sink_sym=0"), {})
        if shifted.get("per_iteration_us") and cfg.sink_sym and it_us > 0:
            # not a target: what the symmetric half-step bought over the shifted pass on this GPU
            result["symmetric_speedup_per_iteration"] = shifted["per_iteration_us"] / it_us
            print(f"  symmetric half-step: {it_us:.1f} us per iteration, shifted pass "
                  f"{shifted['per_iteration_us']:.1f} us ({shifted['per_iteration_us'] / it_us:.2f}x)", flush=True)
        ordered = next((r for r in result.get("loss_sweep", []) if r["config"] == "loss_sym=0"), {})
        loss_ms = result.get("stages_ms", {}).get("loss kernel (eq. 4 + gradient)")
        if ordered.get("ms") and cfg.loss_sym and loss_ms:
            # not a target: what visiting each unordered pair once bought over the ordered loss kernel
            result["symmetric_loss_speedup"] = ordered["ms"] / loss_ms
            print(f"  symmetric loss kernel: {loss_ms:.3f} ms, ordered kernel {ordered['ms']:.3f} ms "
                  f"({ordered['ms'] / loss_ms:.2f}x)", flush=True)
        result["fraction_of_exp_limit"] = frac
        result["best_dense_speedup"] = None if best_dense is None else best_dense / fast
    return result


def integration_calls(radi_fast, student, mc, iters):
    """The loss calls a trainer makes, each ``fn(student) -> loss`` (fixed Sinkhorn budget for
    RADI-P; RADI-L's cold draws come from the global CPU generator, reseeded before each call by
    the checks, so that eager, compiled and graph replays draw the same lists)."""
    import torch

    teacher = mc.mean(dim=1)
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(student.shape, generator=g) < 0.8
    mask[:, 0] = True
    mask = mask.to(student.device)
    targets = torch.zeros_like(student)
    targets[:, 0] = 1.0
    n = student.shape[1]
    hot, cold = min(100, n // 4), min(10, n // 4)
    return {
        "radi_p_tol0": lambda s: radi_fast.radi_pairwise_loss(s, mc, max_iter=iters, tol=0.0),
        "radi_p_tol0_masked": lambda s: radi_fast.radi_pairwise_loss(s, mc, max_iter=iters, tol=0.0, mask=mask),
        "radi_l": lambda s: radi_fast.radi_listwise_loss(s, teacher, hot=hot, cold=cold),
        "radi_l_masked": lambda s: radi_fast.radi_listwise_loss(s, teacher, hot=hot, cold=cold, mask=mask),
        "classification": lambda s: radi_fast.classification_loss(s, targets, mask=mask),
    }


def _fwd_bwd_seeded(fn, s, seed=1234):
    import torch

    torch.manual_seed(seed)
    loss = fn(s)
    loss.backward()
    return loss


def _eager(fn, values, seed=1234):
    s = values.detach().clone().requires_grad_(True)
    loss = _fwd_bwd_seeded(fn, s, seed)
    return loss.detach(), s.grad


def check_sync_free(fn, student):
    """``torch.cuda.set_sync_debug_mode("error")`` around one forward + backward (after a warm-up
    call): True, or the error."""
    import torch

    _eager(fn, student)
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        _eager(fn, student)
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        return True
    except Exception as exc:
        return repr(exc)[:300]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def check_cuda_graph(fn, student):
    """Capture forward + backward in a CUDA graph (warm-up on a side stream, a leaf first used
    there, no autograd graph kept alive: the recipe of the CUDA-graphs docs), replay, compare
    with eager on the same values, then on new values copied into the static input."""
    import torch

    static = student.detach().clone().requires_grad_(True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            static.grad = None
            _fwd_bwd_seeded(fn, static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    static.grad = None
    torch.manual_seed(1234)
    with torch.cuda.graph(graph):
        static_loss = fn(static)
        static_loss.backward()
    out = {}
    for label, values in (("same_values", student), ("new_values", student.flip(1) * 0.5 + 0.1)):
        with torch.no_grad():
            static.copy_(values)
        graph.replay()
        torch.cuda.synchronize()
        e_loss, e_grad = _eager(fn, values)
        out[label] = {"loss_equal": bool(torch.equal(static_loss.detach(), e_loss)),
                      "loss_diff": float((static_loss.detach() - e_loss).abs()),
                      "grad_max_abs_diff": float((static.grad - e_grad).abs().max())}
    out["ok"] = all(v["grad_max_abs_diff"] == 0 and v["loss_equal"] for v in out.values() if isinstance(v, dict))
    return out


def check_compile(fn, student, backend):
    """``torch.compile(fn, fullgraph=True)``: loss and gradient against eager (inductor keeps
    aten's random ops, ``fallback_random``, so RADI-L's seeds match eager's)."""
    import torch
    import torch._dynamo

    torch._dynamo.reset()
    try:
        compiled = torch.compile(fn, backend=backend, fullgraph=True)
        with torch._inductor.config.patch(fallback_random=True):
            c_loss, c_grad = _eager(compiled, student)
        e_loss, e_grad = _eager(fn, student)
        diff = float((c_loss - e_loss).abs())
        grad_diff = float((c_grad - e_grad).abs().max())
        scale = max(1.0, float(e_loss.abs()))
        return {"loss_diff": diff, "grad_max_abs_diff": grad_diff, "ok": diff <= 1e-5 * scale and grad_diff <= 1e-5}
    except Exception as exc:
        return repr(exc)[:300]
    finally:
        torch._dynamo.reset()


def integration_checks(radi_fast, student, mc, iters, dry_run=False):
    """What a trainer needs on a GPU, for each call of :func:`integration_calls`: no
    host sync in a forward + backward (``set_sync_debug_mode("error")``), CUDA-graph capture and
    replay equal to eager, ``torch.compile(fullgraph=True)`` with inductor equal to eager; plus
    the sync behaviour of RADI-P with the default early stopping (``tol > 0``, recorded only).
    ``dry_run`` (CPU): the compile checks alone, with aot_eager. Returns ``(outcomes, targets)``."""
    import torch

    calls = integration_calls(radi_fast, student, mc, iters)
    cuda = student.device.type == "cuda" and not dry_run
    out, targets = {}, {}
    for name, fn in calls.items():
        if cuda:
            out[f"{name}_sync_free"] = check_sync_free(fn, student)
            try:
                out[f"{name}_cuda_graph"] = check_cuda_graph(fn, student)
            except Exception as exc:
                out[f"{name}_cuda_graph"] = repr(exc)[:300]
            torch.cuda.synchronize()
        out[f"{name}_compile_fullgraph"] = check_compile(fn, student, "inductor" if cuda else "aot_eager")
        print(f"  integration {name}: {json.dumps({k: v for k, v in out.items() if k.startswith(name + '_')})}",
              flush=True)
    if cuda:
        out["radi_p_default_tol_sync_free"] = check_sync_free(
            lambda s: radi_fast.radi_pairwise_loss(s, mc), student)
        # a fixed lam with tol > 0: sinkhorn="auto" takes Anderson (whose launcher once built a
        # tensor from Python values: a synchronous copy)
        out["radi_p_anderson_tol_sync_free"] = check_sync_free(
            lambda s: radi_fast.radi_pairwise_loss(s, mc, lam=0.5), student)
        for name in calls:
            targets[f"{name}: fwd+bwd without host sync"] = out[f"{name}_sync_free"] is True
            graph = out[f"{name}_cuda_graph"]
            targets[f"{name}: CUDA-graph replay == eager"] = isinstance(graph, dict) and graph["ok"]
    for name in calls:
        comp = out[f"{name}_compile_fullgraph"]
        targets[f"{name}: compile(fullgraph=True, {'inductor' if cuda else 'aot_eager'}) == eager"] = \
            isinstance(comp, dict) and comp["ok"]
    print(f"  integration {json.dumps(out)}", flush=True)
    return out, targets


def run_integration(args):
    """The integration checks at the benchmark shape (``--integration``)."""
    device = select_device(args)
    import radi_fast

    student, mc = make_inputs(args.B, args.T, args.K, device)
    result = {"benchmark": "integration: sync-free, CUDA graphs, torch.compile(fullgraph=True)", "dry_run": args.dry_run,
              "shape": {"B": args.B, "T": args.T, "K": args.K, "sinkhorn_iterations": args.iters},
              **device_facts(device)}
    print(f"device: {result['device']}  integration checks, B={args.B} T={args.T} K={args.K}", flush=True)
    result["integration"], result["targets"] = integration_checks(radi_fast, student, mc, args.iters, args.dry_run)
    return result


def write(result, outs, prefix="radi_p_bench"):
    slug = re.sub(r"[^A-Za-z0-9]+", "_", result["device"]).strip("_").lower()[:40] or "device"
    name = f"{prefix}_{'dryrun_' if result['dry_run'] else ''}{slug}.json"
    paths = []
    for out in outs:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, name)
        with open(path, "w") as fh:
            json.dump(result, fh, indent=1)
        paths.append(path)
    return paths


def main(argv=None):
    args = parse_args(argv)
    outs = args.out or ([os.environ["OUT"]] if os.environ.get("OUT") else [os.path.join(ROOT, "bench", "results")])
    result = run_integration(args) if args.integration else run(args)
    for path in write(result, outs, "integration" if args.integration else "radi_p_bench"):
        print(f"wrote {path}")
    for name, ok in result.get("targets", {}).items():
        print(f"TARGET {'PASS' if ok else ('n/a ' if ok is None else 'FAIL')}  {name}")
    return result


if __name__ == "__main__":
    main()
