"""Turn the benchmark JSON into ratio tables (Markdown) and plots of time and memory against K.

    python bench/report.py                      # every bench/results/*.json written by the suite
    python bench/report.py bench/results/cpu.json --docs docs/performance.md

For each results file (one device, one ``pytest bench/ --benchmark-only`` session) it writes
``bench/results/<device>.md`` and ``bench/results/<device>-<case>-{time,memory}.png``, and
``docs/performance.md`` gathers every device (the README links it). Every ratio compares two
providers of the *same* session on the *same* inputs: ``x radi_fast`` is the provider's median
time (or peak memory) divided by radi_fast's, so 20x means radi_fast is 20 times faster (leaner).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")

CASE_TITLES = OrderedDict([
    ("radi_p", "RADI-P forward + backward"),
    ("sinkhorn", "Sinkhorn (Algorithm 1) alone"),
    ("uncertainty", "Pairwise uncertainty (eq. 5) alone"),
    ("radi_l", "RADI-L forward + backward, per listwise loss"),
    ("radi_p_dispatch", "RADI-P host dispatch: the eager path against the custom op, a small shape"),
    ("sampler", "Partial-list sampler (test_bench_sampler.py)"),
    ("train_step", "Training step of the built-in model (Table 4 analogue)"),
])
PROVIDER_ORDER = ["radi_fast", "op", "literal", "dense", "dense_compiled", "pot", "geomloss", "geomloss_keops",
                  "op_validated", "torch_fallback", "multinomial", "multinomial_draws_only",
                  "baseline", "kd", "radi_l", "radi_p"]
PROVIDER_NOTES = {
    "radi_fast": "this package (CPU: blockwise torch path; CUDA: Triton kernels)",
    "literal": "the paper's equations as written (radi_fast.reference): eq. 5 as [T, K, K], Algorithm 1 "
               "dense in the plain domain, eq. 4 dense, one sample at a time",
    "dense": "best dense PyTorch: cdist-style U, torch.logsumexp Sinkhorn on a materialised [B, K, K], dense "
             "hinge, autograd",
    "dense_compiled": "the same under torch.compile (compile time excluded)",
    "pot": "POT ot.bregman.sinkhorn_log, torch backend, per sample",
    "geomloss": "geomloss Sinkhorn loop, dense (tensorized) softmin",
    "geomloss_keops": "geomloss Sinkhorn loop, online KeOps softmin",
    "op": "the compiled sampler op torch.ops.radi_fast.partial_list",
    "custom_op": "RADI-P through its torch.library custom op (what radi_pairwise_loss skips in plain eager mode)",
}
REFERENCE = {"sampler": "op", "train_step": "kd"}


# ----------------------------------------------------------------------------- formatting
def fmt_time(s: Optional[float]) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.1f} ms" if s < 0.1 else f"{s * 1e3:.0f} ms"
    return f"{s:.2f} s"


def fmt_mem(b: Optional[float]) -> str:
    if b is None:
        return "-"
    if b < 2**20:
        return f"{b / 2**10:.0f} KiB"
    if b < 2**30:
        return f"{b / 2**20:.1f} MiB"
    return f"{b / 2**30:.2f} GiB"


def fmt_ratio(r: Optional[float]) -> str:
    if r is None or math.isnan(r) or math.isinf(r):
        return "-"
    return f"{r:.0f}x" if r >= 100 else (f"{r:.1f}x" if r >= 10 else f"{r:.2f}x")


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b <= 0:
        return None
    return a / b


MEM_FLOOR = 64 * 2**10  # below this the RSS measure is page-granular noise: ratios are not shown


def mem_ratio(a, b) -> Optional[float]:
    if a is None or b is None:
        return None
    return ratio(max(a, MEM_FLOOR), max(b, MEM_FLOOR)) if max(a, b) >= 2**20 else None


# ----------------------------------------------------------------------------- loading
def load(path: str) -> Optional[dict]:
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or "results" not in doc or "machine" not in doc:
        return None
    doc["_path"] = path
    return doc


def variant(r: dict) -> Tuple:
    """What distinguishes two results of the same case and shape other than the provider."""
    st = r.get("settings") or {}
    if r["case"] == "sinkhorn":
        return (("lam", "mean(U)" if st.get("lam_factor", 1.0) == 1.0 else f"mean(U) x {st.get('lam_factor')}"),)
    if r["case"] == "radi_l":
        return (("loss", r.get("loss")),)
    return ()


def by_shape(results: List[dict], case: str) -> "OrderedDict[Tuple, Dict[str, dict]]":
    rows: Dict[Tuple, Dict[str, dict]] = defaultdict(dict)
    for r in results:
        if r.get("case") == case:
            rows[(variant(r), r.get("B"), r.get("K"))][r.get("provider")] = r
    counts = defaultdict(int)
    for k in rows:
        counts[k[0]] += 1
    # the main setting (most shapes) first, then by batch and size
    return OrderedDict(sorted(rows.items(), key=lambda kv: (-counts[kv[0][0]], str(kv[0][0]), kv[0][1] or 0,
                                                            kv[0][2] or 0)))


def providers_in(rows) -> List[str]:
    seen = {p for d in rows.values() for p in d}
    return [p for p in PROVIDER_ORDER if p in seen] + sorted(seen - set(PROVIDER_ORDER))


# ----------------------------------------------------------------------------- tables
def shape_label(case: str, key: Tuple) -> str:
    var, B, K = key
    extra = ", ".join(f"{k} {v}" for k, v in var)
    n = "N" if case in ("radi_l", "sampler", "train_step") else "K"
    return f"B={B}, {n}={K}" + (f", {extra}" if extra else "")


def case_table(doc: dict, case: str) -> List[str]:
    rows = by_shape(doc["results"], case)
    if not rows:
        return []
    ref = REFERENCE.get(case, "radi_fast")
    provs = providers_in(rows)
    others = [p for p in provs if p != ref]
    out = [f"Median time, and each provider's time / `{ref}`'s (same run, same inputs; higher = `{ref}` faster):", ""]
    out.append("| shape | " + f"`{ref}` | " + " | ".join(f"`{p}`" for p in others) + " |")
    out.append("|---|" + "---|" * (1 + len(others)))
    for key, d in rows.items():
        r0 = d.get(ref)
        t0 = r0["median_s"] if r0 else None
        cells = [fmt_time(t0)]
        for p in others:
            r = d.get(p)
            cells.append("skipped" if r is None else f"{fmt_time(r['median_s'])} ({fmt_ratio(ratio(r['median_s'], t0))})")
        out.append(f"| {shape_label(case, key)} | " + " | ".join(cells) + " |")
    if any(r.get("peak_mem_bytes") is not None for d in rows.values() for r in d.values()):
        out += ["", f"Peak memory of one call, and each provider's / `{ref}`'s:", ""]
        out.append("| shape | " + f"`{ref}` | " + " | ".join(f"`{p}`" for p in others) + " |")
        out.append("|---|" + "---|" * (1 + len(others)))
        for key, d in rows.items():
            r0 = d.get(ref)
            m0 = r0.get("peak_mem_bytes") if r0 else None
            cells = [fmt_mem(m0)]
            for p in others:
                r = d.get(p)
                if r is None:
                    cells.append("skipped")
                else:
                    m = r.get("peak_mem_bytes")
                    cells.append(f"{fmt_mem(m)} ({fmt_ratio(mem_ratio(m, m0))})")
            out.append(f"| {shape_label(case, key)} | " + " | ".join(cells) + " |")
    skips = [s for s in doc.get("skipped", []) if s.get("case") == case]
    if skips:
        reasons = defaultdict(list)
        for s in skips:
            reasons[(s["provider"], s["skipped"])].append(f"B={s['B']} K={s['K']}")
        out += ["", "Skipped: " + "; ".join(f"`{p}` at {', '.join(v)}: {why}" for (p, why), v in reasons.items())]
    diffs = [(p, r.get("max_rel_diff_vs_radi_fast")) for d in rows.values() for p, r in d.items()
             if r.get("max_rel_diff_vs_radi_fast") is not None]
    if diffs:
        worst = defaultdict(float)
        for p, v in diffs:
            worst[p] = max(worst[p], v)
        out += ["", "Agreement with radi_fast's result (max relative difference over the shapes): "
                + ", ".join(f"`{p}` {v:.1e}" for p, v in worst.items()) + "."]
    return out


def train_step_table(doc: dict) -> List[str]:
    rows = by_shape(doc["results"], "train_step")
    if not rows:
        return []
    out = ["| shape | " + " | ".join(f"`{s}`" for s in ("baseline", "kd", "radi_l", "radi_p"))
           + " | RADI-L over KD | RADI-P over KD |", "|---|" + "---|" * 6]
    for key, d in rows.items():
        kd = d.get("kd", {}).get("median_s")
        cells = [fmt_time(d.get(s, {}).get("median_s")) for s in ("baseline", "kd", "radi_l", "radi_p")]
        for s in ("radi_l", "radi_p"):
            t = d.get(s, {}).get("median_s")
            cells.append(f"{100 * (t / kd - 1):+.0f}%" if t and kd else "-")
        out.append(f"| {shape_label('train_step', key)} | " + " | ".join(cells) + " |")
    return out


def headline(doc: dict) -> List[str]:
    """The performance targets at the headline shape: B = 4 (CPU) or the largest B, K = 2500."""
    res = doc["results"]
    cpu = doc["machine"].get("device_type") == "cpu"
    pp = by_shape(res, "radi_p")
    keys = [k for k in pp if k[2] == 2500] or list(pp)
    if not keys:
        return []
    key = max(keys, key=lambda k: (k[1] == 4 if cpu else 0, k[1]))
    d = pp[key]
    rf = d.get("radi_fast")
    lines = [f"Headline shape: B={key[1]}, K={key[2]}, T=10 (radi_fast = {PROVIDER_NOTES['radi_fast']}). "
             "Ratios: the other provider's median time (peak memory) / radi_fast's; above 1 = radi_fast faster "
             "(leaner).", ""]
    lines.append("| comparison | time ratio (wall) | CPU-time ratio | peak-memory ratio |")
    lines.append("|---|---|---|---|")

    def row(label, r, rf):
        return (f"| {label} | {fmt_ratio(ratio(r['median_s'], rf['median_s']))} "
                f"({fmt_time(r['median_s'])} vs {fmt_time(rf['median_s'])}) | "
                f"{fmt_ratio(ratio(r.get('median_cpu_s'), rf.get('median_cpu_s')))} | "
                f"{fmt_ratio(mem_ratio(r.get('peak_mem_bytes'), rf.get('peak_mem_bytes')))} "
                f"({fmt_mem(r.get('peak_mem_bytes'))} vs {fmt_mem(rf.get('peak_mem_bytes'))}) |")

    for p in ("literal", "dense", "dense_compiled"):
        r = d.get(p)
        if rf and r:
            lines.append(row(f"RADI-P fwd+bwd: `{p}` / radi_fast", r, rf))
    sk = by_shape(res, "sinkhorn")
    for lam_key in sorted({k[0] for k in sk}, key=str):
        k2 = (lam_key, key[1], key[2])
        if k2 not in sk:
            continue
        d2 = sk[k2]
        rf2 = d2.get("radi_fast")
        lam = dict(lam_key).get("lam")
        for p in ("pot", "geomloss", "geomloss_keops", "dense", "dense_compiled", "literal"):
            r = d2.get(p)
            if rf2 and r:
                lines.append(row(f"Sinkhorn x{r.get('settings', {}).get('n_iter')} (lam {lam}): `{p}` / radi_fast",
                                 r, rf2))
    if cpu and rf:
        lit = d.get("literal")
        pot = [sk[k].get("pot") for k in sk if k[1:] == key[1:]]
        rfs = [sk[k].get("radi_fast") for k in sk if k[1:] == key[1:]]
        checks = []
        if lit:
            t = ratio(lit["median_s"], rf["median_s"])
            tc = ratio(lit.get("median_cpu_s"), rf.get("median_cpu_s"))
            m = mem_ratio(lit.get("peak_mem_bytes"), rf.get("peak_mem_bytes"))
            checks.append(f"RADI-P >= 20x faster than the literal reference: {'met' if t and t >= 20 else 'NOT met'} "
                          f"({fmt_ratio(t)} wall, {fmt_ratio(tc)} CPU time)")
            checks.append(f"RADI-P >= 10x leaner than the literal reference: {'met' if m and m >= 10 else 'NOT met'} "
                          f"({fmt_ratio(m)})")
        pairs = [(a, b) for a, b in zip(rfs, pot) if a and b]
        if pairs:
            worst = min(ratio(b["median_s"], a["median_s"]) for a, b in pairs)
            checks.append(f"Sinkhorn not slower than POT's log-domain Sinkhorn at equal iterations: "
                          f"{'met' if worst >= 1 else 'NOT met'} (POT / radi_fast, worst over the lam settings: "
                          f"{fmt_ratio(worst)} wall)")
        if checks:
            lines += ["", "CPU performance targets: " + "; ".join(checks) + "."]
    return lines


def how_measured(doc: dict) -> List[str]:
    m, st = doc["machine"], doc.get("settings", {})
    load_s, load_e = doc.get("load_average_start"), doc.get("load_average_end")
    fl = lambda v: "/".join(f"{x:.2f}" for x in v) if v else "?"  # noqa: E731
    return [
        f"- Device: **{m['device']}**; torch {m['torch']}, triton {m.get('triton')}, POT {m.get('pot')}, "
        f"geomloss {m.get('geomloss')} ({m.get('geomloss_backend')}), pykeops {m.get('pykeops')}; "
        f"git {m.get('git_commit')}; {doc['date']}.",
        f"- Load average (1/5/15 min) at start {fl(load_s)}, at end {fl(load_e)} (the machine is shared); "
        f"session wall time {doc.get('wall_s', 0):.0f} s; sizes `{st.get('sizes')}`.",
        "- Timing: pytest-benchmark pedantic mode, one call per round, median of "
        f"{st.get('min_rounds')}-{st.get('max_rounds')} rounds (sized to ~{st.get('seconds_per_bench')} s per "
        "benchmark) after warm-up; compilation (torch.compile, Triton, KeOps) excluded by an extra first call; "
        "CUDA timings synchronise inside the timed function.",
        f"- Peak memory: {m.get('memory_method')}.",
        f"- Inputs: T = 10 MC passes, synthetic logits (answer means N(0, 4), dropout noise std 0.5), fp32. "
        f"RADI-P: lam auto, margin 1, top_k = K, stop when max |d log v| <= 1e-5 (same test for every provider). "
        f"Sinkhorn alone: exactly {st.get('sinkhorn_iters')} iterations for every provider. "
        f"torch.compile providers at B in {st.get('compiled_batch_sizes')}.",
    ]


def device_markdown(doc: dict, plots: Dict[str, List[str]], link_prefix: str) -> List[str]:
    m = doc["machine"]
    out = [f"## {m['device']}", ""]
    out += how_measured(doc) + [""]
    out += ["### Headline", ""] + headline(doc) + [""]
    for case, title in CASE_TITLES.items():
        body = train_step_table(doc) if case == "train_step" else case_table(doc, case)
        if not body:
            continue
        out += [f"### {title}", ""] + body + [""]
        for png in plots.get(case, []):
            out += [f"![{case} {os.path.basename(png)}]({link_prefix}{os.path.basename(png)})", ""]
    out += ["Providers: " + "; ".join(f"`{k}`: {v}" for k, v in PROVIDER_NOTES.items()) + ".", ""]
    return out


# ----------------------------------------------------------------------------- plots
def plot_case(doc: dict, case: str, slug: str, outdir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = by_shape(doc["results"], case)
    if not rows:
        return []
    counts = defaultdict(int)
    for k in rows:
        counts[k[0]] += 1
    variant0 = max(counts, key=lambda v: (counts[v], -len(str(v))))  # the main setting (most shapes)
    Bs = sorted({k[1] for k in rows if k[0] == variant0})
    provs = providers_in(rows)
    colors = {p: f"C{i}" for i, p in enumerate(PROVIDER_ORDER)}
    Ks = sorted({k[2] for k in rows if k[0] == variant0})
    written = []
    for metric, label, scale in (("median_s", "median time (s)", 1.0), ("peak_mem_bytes", "peak memory (MiB)", 2**-20)):
        fig, axes = plt.subplots(1, len(Bs), figsize=(5 * len(Bs), 4), squeeze=False)
        handles = {}
        for ax, B in zip(axes[0], Bs):
            for p in provs:
                pts = sorted((k[2], d[p].get(metric)) for k, d in rows.items()
                             if k[0] == variant0 and k[1] == B and p in d and d[p].get(metric) is not None)
                pts = [(x, y * scale) for x, y in pts if y and y > 0]
                if pts:
                    (line,) = ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", color=colors.get(p),
                                      linewidth=2.5 if p == "radi_fast" else 1.2, label=p)
                    handles.setdefault(p, line)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(Ks)
            ax.set_xticklabels([str(k) for k in Ks])
            ax.minorticks_off()
            ax.set_xlim(min(Ks) / 1.4, max(Ks) * 1.4)
            ax.set_xlabel("K (answers)")
            ax.set_ylabel(label)
            ax.set_title(f"{CASE_TITLES[case].split(',')[0]}, B={B}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
        if not handles:
            plt.close(fig)
            continue
        order = [p for p in provs if p in handles]
        fig.legend([handles[p] for p in order], order, loc="lower center", ncol=min(len(order), 7), fontsize=8,
                   frameon=False)
        var = ", ".join(f"{k} {v}" for k, v in variant0)
        fig.suptitle(f"{doc['machine']['device']}" + (f" ({var})" if var else ""), fontsize=9)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        path = os.path.join(outdir, f"{slug}-{case}-{'time' if metric == 'median_s' else 'memory'}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def plot_train_step(doc: dict, slug: str, outdir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = by_shape(doc["results"], "train_step")
    if not rows:
        return []
    schemes = ["baseline", "kd", "radi_l", "radi_p"]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(1, len(rows))
    for i, (key, d) in enumerate(rows.items()):
        ys = [d.get(s, {}).get("median_s", 0) * 1e3 for s in schemes]
        ax.bar([j + i * width for j in range(len(schemes))], ys, width, label=shape_label("train_step", key))
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(schemes))])
    ax.set_xticklabels(schemes)
    ax.set_ylabel("step time (ms)")
    ax.set_title(f"training step, {doc['machine']['device']}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(outdir, f"{slug}-train_step-time.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


# ----------------------------------------------------------------------------- main
def slug_of(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="results JSON files (default: bench/results/*.json)")
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs", "performance.md"), help="the combined Markdown page")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--readme", default=os.path.join(ROOT, "README.md"),
                    help="README whose performance section (between markers) is regenerated; '' to skip")
    args = ap.parse_args(argv)
    files = args.files or sorted(glob.glob(os.path.join(RESULTS, "*.json")))
    docs = [d for d in (load(f) for f in files) if d is not None]
    if not docs:
        print("no benchmark results found; run: pytest bench/ --benchmark-only", file=sys.stderr)
        return 1
    page = ["# Performance", "",
            "Generated by `python bench/report.py` from `bench/results/*.json` (written by "
            "`pytest bench/ --benchmark-only`); do not edit by hand. Every ratio compares two providers measured in "
            "the same session on the same inputs and the same device: `x` = the provider's median time (or peak "
            "memory) / radi_fast's, so 20x means radi_fast is 20 times faster (leaner). The sampler's reference is the "
            "compiled op; the training step's is KD.", ""]
    for doc in docs:
        slug = slug_of(doc["_path"])
        outdir = os.path.dirname(os.path.abspath(doc["_path"]))
        plots: Dict[str, List[str]] = {}
        if not args.no_plots:
            for case in ("radi_p", "sinkhorn", "uncertainty"):
                plots[case] = plot_case(doc, case, slug, outdir)
            plots["train_step"] = plot_train_step(doc, slug, outdir)
        md = device_markdown(doc, plots, "")
        with open(os.path.join(outdir, f"{slug}.md"), "w") as f:
            f.write("\n".join(["# Benchmarks: " + doc["machine"]["device"], ""] + md[2:]) + "\n")
        rel = os.path.relpath(outdir, os.path.dirname(os.path.abspath(args.docs)))
        page += device_markdown(doc, plots, rel + "/")
        print(f"{doc['_path']}: {len(doc['results'])} results -> {os.path.join(outdir, slug + '.md')}"
              + (f", {sum(len(v) for v in plots.values())} plots" if plots else ""))
    os.makedirs(os.path.dirname(os.path.abspath(args.docs)), exist_ok=True)
    with open(args.docs, "w") as f:
        f.write("\n".join(page) + "\n")
    print(f"-> {args.docs}")
    if args.readme:
        write_readme_section(args.readme, docs)
    return 0


README_START = "<!-- performance:start (generated by bench/report.py) -->"
README_END = "<!-- performance:end -->"


def write_readme_section(readme: str, docs: List[dict]) -> None:
    """Replace the README's performance section (between the markers) with each device's headline."""
    with open(readme) as f:
        text = f.read()
    if README_START not in text or README_END not in text:
        print(f"{readme}: no performance markers, left alone", file=sys.stderr)
        return
    section = [README_START, ""]
    for doc in docs:
        load = "/".join(f"{x:.2f}" for x in doc.get("load_average_start", [])[:3])
        section += [f"Measured on **{doc['machine']['device']}** ({doc.get('date', '')[:10]}, torch "
                    f"{doc['machine'].get('torch', '')}, load average at start {load}):", ""] + headline(doc) + [""]
    section += ["Full tables, plots and how it was measured: [docs/performance.md](docs/performance.md).", "", README_END]
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    with open(readme, "w") as f:
        f.write(head + "\n".join(section) + tail)
    print(f"-> {readme} (performance section)")


if __name__ == "__main__":
    sys.exit(main())
