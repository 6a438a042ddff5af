"""Time candidate Sinkhorn row-sum kernels (bench/row_sums_variants.py) against the package's, on
one GPU, at the benchmark shape (B = 32, T = 10, K = 2500, fp32, F side, potentials after three
iterations). Each variant's row sums are checked against the package kernel's (relative error).

    python bench/row_sums_explore.py --out DIR [--profile]     (CUDA)
    TRITON_INTERPRET=1 python bench/row_sums_explore.py --dry-run   (CPU smoke test, small K)

``--profile`` adds a cProfile of the host side of one fwd+bwd call with the defaults and one
with 20 fixed iterations (where the host time goes). Writes ``row_sums_explore_<device>.json``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import sys
import time
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

MUFU_PER_SM_PER_CLOCK = 16


def cat_operands(p, WL):
    """The column lanes W [B, KP, WL] (``[yb, yb, ys, qb, qs, 0...]``), the row operand's source
    lanes [WL] (-1: one, -2: zero) and the rows' own potential p [B, K], from the package's Z."""
    import torch

    T = p.T
    B, KP, _ = p.zb.shape
    K = p.hs.shape[1]
    W = torch.zeros(B, KP, WL, dtype=p.zb.dtype, device=p.zb.device)
    yb, ys = p.zb[..., :T], p.zs[..., :T]
    W[..., :T] = yb
    W[..., T:2 * T] = yb
    W[..., 2 * T:3 * T] = ys
    W[..., 3 * T] = p.zb[..., T + 1]
    W[..., 3 * T + 1] = p.zs[..., T + 1]
    src = torch.full((WL,), -2, dtype=torch.int32)
    src[:T] = torch.arange(2 * T, 3 * T)  # ys_i x yb_j
    src[T:2 * T] = torch.arange(0, T)  # yb_i x yb_j
    src[2 * T:3 * T] = torch.arange(0, T)  # yb_i x ys_j
    src[3 * T:3 * T + 2] = -1  # 1 x qb_j, 1 x qs_j
    own = (p.zb[:, :K, T] + p.zs[:, :K, T]).contiguous()
    return W, src.to(p.zb.device), own


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--K", type=int, default=2500)
    ap.add_argument("--out", action="append", default=[])
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--set", choices=("layout", "exp", "floor"), default="floor",
                    help="layout: pipelined and one-product (cat) kernels; exp: the exponential on MUFU, in "
                         "inline asm, partly on the FMA pipe, or left out, and the SM clock under load")
    ap.add_argument("--only", help="run only the variants whose name starts with this (for Nsight Compute)")
    args = ap.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
        args.B, args.K = 2, 150
    import torch
    import triton

    import row_sums_variants as V
    from gpu_pairwise import make_inputs, nvidia_smi
    from radi_fast.kernels import sinkhorn
    from radi_fast.ops import pairwise_triton as PT
    from radi_fast.ops.triton_config import default_config, half_step_maxnreg, triton_cdiv

    dev = torch.device("cpu" if args.dry_run else "cuda")
    B, K, T = args.B, args.K, 10
    student, mc = make_inputs(B, T, K, dev)
    cfg = default_config(args.dry_run, torch.float32)
    p = PT.prepare_triton(mc, None, K, None, None, cfg)
    F = PT.sinkhorn_potentials_triton(p, 3, 0.0, cfg)[0]
    KP, TP = p.padded, p.zb.shape[2]
    prev = torch.full((B,), float("inf"), device=dev)
    tol = torch.zeros(1, device=dev)
    exps = float(((p.n_valid * (p.n_valid - 1)).sum()).item())
    result = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "triton": triton.__version__,
              "torch": torch.__version__, "B": B, "K": K, "T": T, "exps_per_half_step": exps, "variants": []}
    if dev.type == "cuda":
        sm = torch.cuda.get_device_properties(dev).multi_processor_count
        mhz = float(nvidia_smi("clocks.max.sm") or 1980)
        result.update(sms=sm, max_clock_mhz=mhz, mufu_half_step_us=exps / (sm * MUFU_PER_SM_PER_CLOCK * mhz * 1e6) * 1e6)

    def timed(fn):
        if dev.type != "cuda":
            fn()
            return None
        return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median") * 1e3

    def package(bm, bn, w, st, split):
        """The package's half-step (row sums and update in one launch) on copies of Z and F: each
        call is one more F half-step; with several shares its partial sums are comparable."""
        part = torch.zeros(split, B, K, device=dev)
        zb, zs, pot = p.zb.clone(), p.zs.clone(), F.clone()
        tickets = torch.zeros(B, triton_cdiv(K, bm), dtype=torch.int32, device=dev)
        nxt = torch.zeros(B, device=dev)

        def fn():
            sinkhorn.sinkhorn_half_step_kernel[(B, triton_cdiv(K, bm), split)](
                zb, zs, p.hs, p.n_valid, pot, part, tickets, prev, nxt, tol, K, KP, T=T, TP=TP, BM=bm, BN=bn,
                G_SIDE=0, SPLIT=True, COMPUTE=triton.language.float32, ACC=False, WRITE_DELTA=False,
                SHIFT_LO=2.0 ** cfg.shift_lo_log2, SHIFT_HI=2.0 ** cfg.shift_hi_log2, num_warps=w, num_stages=st,
                maxnreg=half_step_maxnreg(replace(cfg, sink_warps=w), True))
        return fn, part if split > 1 else None

    def on_points(kernel, bm, bn, w, st, split, **extra):
        """A variant that reads the package's Z and writes partial row sums."""
        part = torch.zeros(split, B, K, device=dev)

        def fn():
            kernel[(B, triton_cdiv(K, bm), split)](
                p.zb, p.zs, p.n_valid, prev, part, tol, K, KP, split, T=T, TP=TP, BM=bm, BN=bn, G_SIDE=0, SPLIT=True,
                COMPUTE=triton.language.float32, num_warps=w, num_stages=st, **extra)
        return fn, part

    def pipe(bm, bn, w, st, split):
        return on_points(V.rowsum_pipe, bm, bn, w, st, split, ACC=False)

    cat_cache = {}

    def cat(bm, bn, w, st, split, WL=32, pipelined=True, EXP=0):
        if WL not in cat_cache:
            cat_cache[WL] = cat_operands(p, WL)
        W, src, own = cat_cache[WL]
        part = torch.zeros(split, B, K, device=dev)

        def fn():
            V.rowsum_cat[(B, triton_cdiv(K, bm), split)](
                W, src, own, p.n_valid, prev, part, tol, K, KP, split, WL=WL, BM=bm, BN=bn,
                COMPUTE=triton.language.float32, PIPE=pipelined, ADD_OWN=True, EXP=EXP, num_warps=w, num_stages=st)
        return fn, part

    def expv(bm, bn, w, st, split, EXP=0):
        return on_points(V.rowsum_exp, bm, bn, w, st, split, EXP=EXP)

    def tma(bm, bn, w, st, split, EXP=0):
        part = torch.zeros(split, B, K, device=dev)
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))

        def fn():
            V.rowsum_tma[(B, triton_cdiv(K, bm), split)](
                p.zb, p.zs, p.n_valid, prev, part, tol, K, KP, split, B * KP, T=T, TP=TP, BM=bm, BN=bn, G_SIDE=0,
                COMPUTE=triton.language.float32, EXP=EXP, num_warps=w, num_stages=st)
        return fn, part

    ref_fn, ref_part = expv(128, 128, 8, 2, 1)  # the row sums of the package's loops, before the fused update
    ref_fn()
    reference = ref_part.sum(0).double()
    tiles = [(128, 128, 8, 2), (128, 64, 8, 2), (64, 128, 4, 2), (64, 64, 4, 3), (128, 64, 4, 3)]
    if args.set == "layout":
        plan = [("package", package, t, {}) for t in tiles[:2]]
        plan += [("pipe3", pipe, t, {}) for t in tiles[:3]]
        plan += [("cat32_pipe", cat, t, {}) for t in tiles]
        plan += [("cat32_seq", cat, t, {"pipelined": False}) for t in tiles[:4]]
        plan += [("cat64_pipe", cat, t, {"WL": 64}) for t in tiles[:2]]
    elif args.set == "exp":
        plan = [("package", package, tiles[0], {})]
        plan += [(f"exp{e}", expv, t, {"EXP": e}) for t in (tiles[0], tiles[3]) for e in range(5)]
    else:  # what the loop costs without its exponentials (EXP 4), per design
        plan = [("package", package, t, {}) for t in (tiles[0], (128, 256, 8, 2), (64, 256, 4, 2), (64, 128, 4, 3))]
        plan += [("exp4", expv, t, {"EXP": 4}) for t in (tiles[0], (64, 256, 4, 2))]
        plan += [(f"cat32_{m}_exp{e}", cat, t, {"EXP": e, "pipelined": m == "pipe"})
                 for m in ("pipe", "seq") for e in (0, 4) for t in (tiles[0], tiles[3])]
        plan += [(f"tma_exp{e}", tma, t, {"EXP": e}) for e in (0, 4) for t in (tiles[0], tiles[3], (128, 128, 8, 3))]
    if args.dry_run:  # inline PTX does not run in the interpreter, nor do tensor descriptors
        plan = [x for x in plan if x[3].get("EXP", 0) in (0, 4) and not x[0].startswith("tma")]
    if args.dry_run:
        plan = [(n, f, (32, 32, 4, 1), kw) for n, f, _, kw in plan[::3]]
    if args.only:
        plan = [x for x in plan if x[0].startswith(args.only)][:2]
    for name, make, (bm, bn, w, st), kw in plan:
        for split in ((1,) if args.dry_run or args.only else (1, 2) if args.set != "layout" else (1, 2, 3)):
            entry = {"name": name, "bm": bm, "bn": bn, "warps": w, "stages": st, "split": split, **kw}
            try:
                fn, part = make(bm, bn, w, st, split, **kw)
                t0 = time.time()
                fn()
                entry["first_call_s"] = round(time.time() - t0, 2)
                if part is not None:
                    got = part.sum(0).double()
                    entry["rel_err"] = float(((got - reference).abs() / reference.abs().clamp_min(1e-30)).max())
                us = timed(fn)
                if us is not None:
                    entry["us"] = us
                    entry["mufu_fraction"] = result["mufu_half_step_us"] / us
            except Exception as exc:  # a variant that fails to compile is a result too
                entry["error"] = repr(exc)[-400:]
            result["variants"].append(entry)
            print(json.dumps(entry), flush=True)
    ok = [v for v in result["variants"] if "us" in v]
    for v in sorted(ok, key=lambda v: v["us"])[:12]:
        print(f"  {v['name']:12s} {v['bm']}x{v['bn']} w{v['warps']} s{v['stages']} split {v['split']}: "
              f"{v['us']:7.1f} us  {100 * v['mufu_fraction']:5.1f}% of MUFU  rel err {v.get('rel_err', float('nan')):.1e}")

    if dev.type == "cuda" and args.set == "exp":  # the SM clock while the package kernel runs for ~2 s
        import subprocess

        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                                "-lms", "100"], stdout=subprocess.PIPE, text=True)
        t_end = time.time() + 2.5
        while time.time() < t_end:
            for _ in range(50):
                ref_fn()
            torch.cuda.synchronize()
        smi.terminate()
        samples = [line.split(",") for line in smi.communicate()[0].split("\n") if line.strip()]
        result["clock_under_load"] = [[float(a), float(b)] for a, b in samples if a.strip() and b.strip()]
        print("SM clock MHz, power W under load:", result["clock_under_load"], flush=True)

    if args.profile:
        import radi_fast

        result["host_profiles"] = {}
        s_d, mc_d = make_inputs(B, T, K, dev, seed=1)
        cases = {"defaults": lambda s: radi_fast.radi_pairwise_loss(s, mc_d, backend="triton", top_k=K),
                 "fixed20": lambda s: radi_fast.radi_pairwise_loss(s, mc_d, backend="triton", top_k=K,
                                                                   max_iter=20, tol=0.0)}
        for label, fn in cases.items():
            def call():
                s = s_d.clone().requires_grad_(True)
                fn(s).sum().backward()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
            for _ in range(3):
                call()
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            for _ in range(5):
                call()
            prof.disable()
            wall = (time.perf_counter() - t0) / 5
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
            text = re.sub(r"/[^\s]*/(site-packages|main|work)/", "", buf.getvalue())
            result["host_profiles"][label] = {"wall_ms_per_call_profiled": wall * 1e3, "top_tottime": text[-6000:]}
            print(f"== host profile {label}: {wall * 1e3:.2f} ms per call under cProfile\n{text[:4000]}", flush=True)

    name = re.sub(r"[^a-z0-9]+", "_", result["device"].lower()).strip("_")
    for out in args.out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"row_sums_explore_{name}.json"), "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
