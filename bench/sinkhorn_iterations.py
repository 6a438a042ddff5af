"""Sinkhorn iterations and time to a tolerance, per scheme, against POT and geomloss (CPU).

    python bench/sinkhorn_iterations.py [--K 1000 2500] [--factors 1 0.3 0.1 0.03 0.01] [--max-iter 3000]
        [--providers anderson ...] [--resume] [--fp64-factors 0.01] [--from-json]

One sample of the benchmarks' teacher law (``bench/providers.py``: answer means ~ N(0, 2^2),
dropout-like noise 0.5, T = 10), fp32, ``lam = factor * mean off-diagonal U``, stopping at
``max |Δ log v| <= 1e-5`` (``--tol``). For each radi_fast scheme (plain, overrelaxed, anderson,
scaling; "auto" is plain at lam = auto and anderson otherwise): iterations, wall time (median of
``--rounds``), the marginal error of W at the end; plain and anderson also in float64 at
``--fp64-factors`` (0.01: below fp32's precision floor). ``--providers`` with ``--resume`` reruns
some providers in the cases the JSON already has. POT's ``ot.sinkhorn(method="sinkhorn_log")``
and its batched ``ot.batch.solve_batch(method="log_sinkhorn")`` run on the same cost (diagonal at a
huge cost) with ``stopThr``/``tol`` = the tolerance, their own stopping rule (the L2 norm of the
column-marginal error, checked every 10 iterations); geomloss's epsilon-scaling
(``SamplesLoss("sinkhorn", scaling=0.5, debias=False)``) has no tolerance, only its schedule of
epsilon levels, and keeps the diagonal: its numbers are for scale. Writes
``bench/results/sinkhorn_iterations_cpu.json`` and ``.png`` (iterations vs lam) and prints the
targets as PASS/FAIL.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

SCHEMES = ("plain", "overrelaxed", "anderson", "scaling")
FP64_SCHEMES = ("plain", "anderson")  # also run in float64 at --fp64-factors (below fp32's precision floor)
SOLVERS = SCHEMES + tuple(s + "_fp64" for s in FP64_SCHEMES)  # radi_fast's own
PROVIDERS = SOLVERS + ("pot", "pot_batch", "geomloss")


def timed(fn, rounds):
    times, out = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def marginal_error_from_kernel(logk, f, g):
    """L-infinity error of the row and column sums of ``exp(f_i + g_j + logk_ij)`` against 1."""
    W = torch.exp(f[:, None] + g[None, :] + logk)
    return max(float((W.sum(0) - 1).abs().max()), float((W.sum(1) - 1).abs().max()))


def run_case(K, factor, args, case=None):
    """One (K, factor) case: every provider in ``args.providers`` (into ``case`` when given: a
    rerun replaces those providers' entries and keeps the others)."""
    import providers as P
    from radi_fast.ops.pairwise_cpu import prepare_pairwise, solve_sinkhorn

    mc = P.make_mc(1, P.DEFAULT_T, K, torch.device("cpu"), seed=0)
    mean_u = float(prepare_pairwise(mc, None, K, None, None).lam[0])
    lam = factor * mean_u
    problem = prepare_pairwise(mc, None, K, lam, None)
    case = case or {"K": K, "factor": factor, "lam": lam, "mean_U": mean_u, "providers": {}}
    wanted = set(args.providers)
    fp64 = None  # the float64 problem, built once if a float64 provider runs
    for scheme in SOLVERS:
        if scheme not in wanted or (scheme.endswith("_fp64") and factor not in args.fp64_factors):
            continue
        if scheme.endswith("_fp64"):
            fp64 = fp64 or prepare_pairwise(mc.double(), None, K, lam, None)
            name, prob = scheme[:-len("_fp64")], fp64
        else:
            name, prob = scheme, problem
        (f, g, it, err), sec = timed(lambda: solve_sinkhorn(prob, args.max_iter, args.tol, name, True), args.rounds)
        case["providers"][scheme] = {"iterations": int(it[0]), "seconds": sec, "marginal_error": float(err[0]),
                                     "converged": int(it[0]) < args.max_iter}
    z = problem.points[0].double()
    if wanted & {"pot", "pot_batch"}:
        run_pot(case, wanted, z, lam, args)
    if "geomloss" in wanted:
        run_geomloss(case, z, lam, args)
    return case


def run_pot(case, wanted, z, lam, args):
    """POT's log-domain solver and its batched one on the same cost (diagonal at a huge cost)."""
    K = z.shape[0]
    try:
        import ot
    except ImportError as exc:
        for name in wanted & {"pot", "pot_batch"}:
            case["providers"][name] = {"skipped": repr(exc)}
        return
    M = (torch.cdist(z, z) ** 2 / z.shape[1]).float()
    M.fill_diagonal_(1e9)
    ones = torch.ones(K)
    if "pot" in wanted:
        def pot():
            return ot.sinkhorn(ones, ones, M, lam, method="sinkhorn_log", numItermax=args.max_iter,
                               stopThr=args.tol, log=True)

        (plan, log), sec = timed(pot, args.rounds)
        err = max(float((plan.sum(0) - 1).abs().max()), float((plan.sum(1) - 1).abs().max()))
        niter = int(log.get("niter", -1))
        case["providers"]["pot"] = {"iterations": niter, "seconds": sec, "marginal_error": err,
                                    "converged": niter < args.max_iter - 1}
    if "pot_batch" in wanted:
        try:
            from ot.batch import solve_batch

            res, sec = timed(lambda: solve_batch(M[None], reg=lam, a=ones[None], b=ones[None],
                                                 max_iter=args.max_iter, tol=args.tol, method="log_sinkhorn"),
                             args.rounds)
            plan = res.plan[0]
            err = max(float((plan.sum(0) - 1).abs().max()), float((plan.sum(1) - 1).abs().max()))
            case["providers"]["pot_batch"] = {"iterations": None, "seconds": sec, "marginal_error": err,
                                              "converged": err <= 10 * args.tol}
        except Exception as exc:  # POT without ot.batch
            case["providers"]["pot_batch"] = {"skipped": repr(exc)[:200]}


def run_geomloss(case, z, lam, args):
    """geomloss's epsilon-scaling: another problem (diagonal kept), its levels and time for scale."""
    try:
        from geomloss import SamplesLoss
        from geomloss._legacy.sinkhorn_divergence import epsilon_schedule
    except ImportError as exc:
        case["providers"]["geomloss"] = {"skipped": repr(exc)}
        return
    x = (z * math.sqrt(2 / z.shape[1])).float()  # geomloss's cost |x - y|^2 / 2 is then U
    loss = SamplesLoss("sinkhorn", p=2, blur=math.sqrt(lam), scaling=0.5, debias=False, potentials=True,
                       backend="tensorized")
    _, sec = timed(lambda: loss(x, x), args.rounds)
    levels = len(epsilon_schedule(2, float((x.max(0).values - x.min(0).values).norm()), math.sqrt(lam), 0.5))
    case["providers"]["geomloss"] = {"iterations": levels, "seconds": sec, "marginal_error": None,
                                     "converged": None,
                                     "note": "another problem (keeps the diagonal, marginals 1/K), no tolerance: "
                                             "its epsilon levels and time, for scale"}


def targets(cases, max_iter):
    from radi_fast.pairwise import resolve_sinkhorn

    out = {}
    by = {(c["K"], c["factor"]): c["providers"] for c in cases}
    for K in sorted({c["K"] for c in cases}):
        for factor, ratio in ((0.03, 0.25), (0.1, 0.5)):
            p = by.get((K, factor))
            if p:
                out[f"K={K}, lam={factor} x mean U: anderson <= {ratio} x plain's iterations"] = \
                    p["anderson"]["iterations"] <= ratio * p["plain"]["iterations"] and p["anderson"]["converged"]
        p = by.get((K, 0.01))
        if p and "anderson" in p and "plain" in p:
            out[f"K={K}, lam=0.01 x mean U, fp32: anderson converged within 1000 iterations "
                f"(plain: {p['plain']['iterations']} of {max_iter})"] = p["anderson"]["iterations"] <= 1000
        if p and "anderson_fp64" in p and "plain_fp64" in p:
            a, b = p["anderson_fp64"], p["plain_fp64"]
            out[f"K={K}, lam=0.01 x mean U, float64: anderson converged within 1000 iterations ({a['iterations']}) "
                f"where plain does not within {max_iter} ({b['iterations']})"] = \
                a["converged"] and a["iterations"] <= 1000 and not b["converged"]
        p = by.get((K, 1.0))
        if p:  # lam = mean U is what lam="auto" gives: the scheme "auto" picks there
            auto = resolve_sinkhorn("auto", None, 1e-5)
            out[f"K={K}, lam = mean U: auto ({auto} there) never more iterations than plain; anderson "
                f"{p['anderson']['iterations']} vs plain {p['plain']['iterations']}"] = \
                p[auto]["iterations"] <= p["plain"]["iterations"]
    return out


DOCS = os.path.join(ROOT, "docs", "sinkhorn.md")
MARK_START, MARK_END = "<!-- sinkhorn-results:start -->", "<!-- sinkhorn-results:end -->"


def _cell(entry, max_iter):
    if not entry or "skipped" in entry or "error" in entry:
        return "-"
    it, sec = entry.get("iterations"), entry.get("seconds")
    if it is None:
        return f"({sec:.2f} s)" if sec is not None else "-"
    mark = "" if entry.get("converged", True) in (True, None) else " (cap)"
    return f"{it}{mark} ({sec:.2f} s)"


def docs_section(result, gpu=None):
    """The Measurements section of docs/sinkhorn.md from the CPU results (and the GPU bench's)."""
    max_iter = result["max_iter"]
    lines = [f"CPU ({result['machine']}, {result['threads']} thread, torch {result['torch']}), one sample of "
             f"the benchmarks' teacher law, fp32, tol {result['tol']:g} on `max |Δ log v|`, cap {max_iter} "
             f"iterations; iterations (wall time). POT stops on its own rule (L2 column-marginal error, checked "
             f"every 10 iterations); `ot.batch` reports no count; geomloss solves a related problem (diagonal kept) "
             f"with its epsilon levels and no tolerance: its column gives the levels, for scale. Written by "
             f"`python bench/sinkhorn_iterations.py` ({result['wall_seconds'] / 60:.0f} min); plot: "
             f"`bench/results/sinkhorn_iterations_cpu.png`.", ""]
    cols = ("plain", "overrelaxed", "anderson", "scaling", "pot", "pot_batch", "geomloss")
    lines += ["| K | lam / mean U | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for c in sorted(result["cases"], key=lambda c: (c["K"], -c["factor"])):
        lines.append(f"| {c['K']} | {c['factor']:g} | " + " | ".join(_cell(c["providers"].get(n), max_iter)
                                                                      for n in cols) + " |")
    fp64 = [c for c in sorted(result["cases"], key=lambda c: (c["K"], -c["factor"]))
            if any(n.endswith("_fp64") for n in c["providers"])]
    if fp64:
        lines += ["", "The same in float64 (below fp32's precision floor, see above):", "",
                  "| K | lam / mean U | " + " | ".join(FP64_SCHEMES) + " |", "|---" * (len(FP64_SCHEMES) + 2) + "|"]
        lines += [f"| {c['K']} | {c['factor']:g} | " + " | ".join(_cell(c["providers"].get(n + "_fp64"), max_iter)
                                                                   for n in FP64_SCHEMES) + " |" for c in fp64]
    if result.get("notes"):
        lines += ["", "Notes on this run:", ""] + [f"- {note}" for note in result["notes"]]
    lines += ["", "Targets:", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in result["targets"].items()]
    if gpu:
        rows = gpu.get("sinkhorn_schemes", [])
        lines += ["", f"GPU ({gpu.get('device', '?')}, `bench/gpu_pairwise.py`): B = 32, T = 10, K = 2500, fp32, "
                      f"tol 1e-5, cap 3000; RADI-P forward+backward time (median of 2 after a warm-up) and the "
                      f"iterations (largest / mean over the batch):", "",
                  "| lam / mean U | " + " | ".join(SCHEMES) + " |", "|---" * (len(SCHEMES) + 1) + "|"]
        for factor in sorted({r["factor"] for r in rows}, reverse=True):
            cells = []
            for scheme in SCHEMES:
                r = next((r for r in rows if r["factor"] == factor and r["scheme"] == scheme), None)
                cells.append("-" if r is None or "error" in r else
                             f"{r['ms']:.1f} ms ({r['iterations_max']} / {r['iterations_mean']:.0f})")
            lines.append(f"| {factor:g} | " + " | ".join(cells) + " |")
        if gpu.get("notes"):
            lines += [""] + [f"- {note}" for note in gpu["notes"]]
    return "\n".join(lines)


def write_docs(result, gpu=None, path=DOCS):
    text = open(path).read()
    start, end = text.index(MARK_START) + len(MARK_START), text.index(MARK_END)
    with open(path, "w") as fh:
        fh.write(text[:start] + "\n" + docs_section(result, gpu) + "\n" + text[end:])


def latest_gpu_result():
    """The GPU bench's scheme timings (the newest results file that has them), or None."""
    import glob

    found = []
    for path in glob.glob(os.path.join(ROOT, "bench", "results", "radi_p_bench_*.json")):
        doc = json.load(open(path))
        if doc.get("sinkhorn_schemes") and not doc.get("dry_run"):
            # newest by the time the bench wrote down, then by name (not by mtime: a clone's mtimes
            # are checkout times); the two files of 2026-11-27 predate "written", "_fused" sorts last
            found.append((doc.get("written", ""), os.path.basename(path), doc))
    return max(found, key=lambda f: f[:2])[2] if found else None


def plot(cases, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ks = sorted({c["K"] for c in cases})
    fig, axes = plt.subplots(1, len(Ks), figsize=(5.5 * len(Ks), 4), squeeze=False)
    for ax, K in zip(axes[0], Ks):
        rows = sorted((c for c in cases if c["K"] == K), key=lambda c: c["factor"])
        for name, style in (("plain", "o-"), ("overrelaxed", "s-"), ("anderson", "^-"), ("scaling", "d-"),
                            ("pot", "x--")):
            pts = [(c["factor"], c["providers"][name]["iterations"]) for c in rows
                   if c["providers"].get(name, {}).get("iterations")]
            if pts:
                ax.plot(*zip(*pts), style, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("lam / mean off-diagonal U")
        ax.set_ylabel("iterations to max |Δ log v| <= tol")
        ax.set_title(f"K = {K} (cap {rows[0]['max_iter'] if rows else ''})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, nargs="+", default=[1000, 2500])
    ap.add_argument("--factors", type=float, nargs="+", default=[1.0, 0.3, 0.1, 0.03, 0.01])
    ap.add_argument("--max-iter", type=int, default=3000)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "sinkhorn_iterations_cpu"))
    ap.add_argument("--resume", action="store_true", help="keep the cases OUT.json already has, run the others")
    ap.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS,
                    help="what to run; with --resume, a case OUT.json has gets these providers rerun")
    ap.add_argument("--fp64-factors", type=float, nargs="*", default=[0.01],
                    help="factors at which plain and anderson also run in float64")
    ap.add_argument("--from-json", action="store_true",
                    help="do not run: recompute the targets, plot and docs section from OUT.json")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.out + ".json") as fh:
            result = json.load(fh)
        return finish(result, args.out)
    torch.set_num_threads(args.threads)
    cases, spent, notes = [], 0.0, []
    if args.resume and os.path.exists(args.out + ".json"):  # keep the cases a previous run finished
        with open(args.out + ".json") as fh:
            previous = json.load(fh)
        cases, spent, notes = previous["cases"], previous.get("wall_seconds", 0.0), previous.get("notes", [])
    started = time.time()

    def result_so_far():
        return {"what": __doc__.splitlines()[0], "tol": args.tol, "max_iter": args.max_iter, "dtype": "float32",
                "threads": args.threads, "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__, "wall_seconds": spent + time.time() - started, "notes": notes,
                "cases": cases}

    partial = set(args.providers) != set(PROVIDERS)
    for K in args.K:
        for factor in args.factors:
            old = next((c for c in cases if (c["K"], c["factor"]) == (K, factor)), None)
            if old is not None and not partial:
                continue
            if old is not None and old.get("max_iter", args.max_iter) != args.max_iter:
                raise SystemExit(f"--max-iter {args.max_iter} differs from the case's {old['max_iter']}")
            case = run_case(K, factor, args, old)
            case["max_iter"] = args.max_iter
            if old is None:
                cases.append(case)
            print(json.dumps({k: v for k, v in case.items() if k != "providers"}),
                  json.dumps({n: {k: v for k, v in p.items() if k in ("iterations", "seconds", "marginal_error")}
                              for n, p in case["providers"].items()}), flush=True)
            with open(args.out + ".json", "w") as fh:  # a run cut short keeps what it finished
                json.dump(dict(result_so_far(), complete=False), fh, indent=1)
    result = result_so_far()
    return finish(result, args.out)


def finish(result, out):
    """Targets, JSON, plot, docs section (the docs only for a run at the default output path)."""
    result["targets"] = targets(result["cases"], result["max_iter"])
    with open(out + ".json", "w") as fh:
        json.dump(result, fh, indent=1)
    plot(result["cases"], out + ".png")
    if os.path.abspath(out) == os.path.abspath(os.path.join(ROOT, "bench", "results", "sinkhorn_iterations_cpu")):
        write_docs(result, latest_gpu_result())
    for name, ok in result["targets"].items():
        print(f"TARGET {'PASS' if ok else 'FAIL'}  {name}")
    return result


if __name__ == "__main__":
    main()
