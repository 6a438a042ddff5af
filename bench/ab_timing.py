"""The GPU numbers that the GPU-limit targets name, for whichever radi_fast is importable, so two
builds can be compared on the same machine in one device call (different H100 hosts differ:
docs/triton.md):

    python bench/ab_timing.py --label current --out DIR
    RADI_AB_ROOT=/tmp/base PYTHONPATH=/tmp/base-site python bench/ab_timing.py --label baseline --out DIR

``RADI_AB_ROOT``: the source tree whose ``bench/`` (train-step helper) is used; the package comes
from the normal import path. B = 32, T = 10, K = 2500, fp32, forward + backward: the Sinkhorn stage
alone at 20 and 2 iterations (one iteration = the difference / 18), ``tol = 0, max_iter = 20``,
the package defaults (also the host's time to issue that call); one training step of KD and RADI-P at B = 64, N = 2500 (the built-in
model). The inputs, timer (CUDA events, warm-up calls first, medians) and fwd+bwd are
bench/gpu_pairwise.py's, taken from the same tree as the train step. Writes ``ab_<label>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.environ.get("RADI_AB_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)


def this_trees_host_ms():
    """bench/gpu_pairwise.py's ``host_ms`` of the tree this script is in (a baseline tree may
    predate it; it only times the host's part of a call, the same way for both builds)."""
    import importlib.util

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_pairwise.py")
    spec = importlib.util.spec_from_file_location("gpu_pairwise_here", here)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.host_ms


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True)
    ap.add_argument("--out", default=".")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny sizes: a test of this script")
    args = ap.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["RADI_BENCH_SIZES"] = "tiny"
    import torch

    import radi_fast  # first: gpu_pairwise puts its tree's root on sys.path, the package must not come from there
    from gpu_pairwise import Timer, fwd_bwd, make_inputs, sinkhorn_stage
    from radi_fast.ops import pairwise_triton as PT
    from radi_fast.ops.triton_config import default_config

    dev = torch.device("cpu" if args.smoke else "cuda")
    timer = Timer(dev)
    warmup = 0 if args.smoke else 3
    rounds = 1 if args.smoke else args.rounds

    def timed(fn, rounds=rounds):
        return timer.measure(fn, warmup, rounds)["median_ms"]

    # the shapes and inputs of bench/gpu_pairwise.py, whose numbers the targets name
    B, T, K = (2, 10, 60) if args.smoke else (32, 10, 2500)
    student, mc = make_inputs(B, T, K, dev)
    cfg = default_config(False, torch.float32)
    stage = {n: sinkhorn_stage(PT, student, mc, n, cfg, timer, warmup, rounds)[0]["median_ms"] for n in (2, 20)}
    s_d, mc_d = make_inputs(B, T, K, dev, seed=1)

    def loss(mc_, **kw):
        return lambda s: radi_fast.radi_pairwise_loss(s, mc_, backend="triton", top_k=K, **kw)

    result = {"label": args.label, "radi_fast": getattr(radi_fast, "__version__", "?"),
              "package_file": radi_fast.__file__, "device": "cpu" if args.smoke else torch.cuda.get_device_name(dev),
              "torch": torch.__version__, "sinkhorn_stage_ms": stage,
              "per_iteration_us": (stage[20] - stage[2]) / 18 * 1e3,
              "fixed20_fwd_bwd_ms": timed(lambda: fwd_bwd(loss(mc, margin_mode="ot", max_iter=20, tol=0.0), student)),
              "defaults_fwd_bwd_ms": timed(lambda: fwd_bwd(loss(mc_d), s_d)),
              "defaults_host_ms": this_trees_host_ms()(loss(mc_d), s_d, timer, rounds)}
    try:
        try:
            from train_step_case import TrainStep
        except ImportError:  # trees before 2026-11-28 kept it in the benchmark's test module
            from test_bench_train_step import _Step as TrainStep

        steps = {s: TrainStep(100 if args.smoke else 2500, s, dev) for s in ("kd", "radi_p")}
        result["train_step_ms"] = {s: timed(step, rounds=1 if args.smoke else 20) for s, step in steps.items()}
        result["radi_p_over_kd_ms"] = result["train_step_ms"]["radi_p"] - result["train_step_ms"]["kd"]
    except Exception as exc:  # the numbers above still stand
        result["train_step_error"] = repr(exc)[-300:]
    print(json.dumps(result), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"ab_{args.label}.json"), "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
