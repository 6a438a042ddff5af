"""docs/results.md and the PNG plots from bench/results/ablations.json.

    python bench/ablations_report.py                 # the default paths
    python bench/ablations_report.py --json J --docs D --img DIR

The same as ``python bench/ablations.py --report``. The hand-written verdicts between the
``<!-- verdict:start -->`` and ``<!-- verdict:end -->`` markers of an existing report are kept;
everything else (tables, per-comparison readings, plots) is generated from the JSON.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from ablation_terms import GROUPS, MAIN_TEACHER_EPOCHS, METRIC_NAMES, METRICS, verdict  # noqa: E402


def fmt_ci(s: dict, digits: int = 2) -> str:
    if not math.isfinite(s.get("half_width", float("nan"))):
        return f"{s['mean']:+.{digits}f}"
    return f"{s['mean']:+.{digits}f} [{s['ci'][0]:+.{digits}f}, {s['ci'][1]:+.{digits}f}]"


def fmt_abs(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['half_width']:.2f}" if math.isfinite(s.get("half_width", float("nan"))) \
        else f"{s['mean']:.2f}"


def cell_table(rep: dict, ids: Sequence[str], against: str = "vs_comparator", show_test: bool = True) -> List[str]:
    cells = rep["cells"]
    head = "| variant | spec | n | " + " | ".join(f"test {METRIC_NAMES[m]}" for m in METRICS) + " | " + \
        " | ".join(f"Δ {METRIC_NAMES[m]} [95% CI]" for m in METRICS) + " | vs |"
    lines = [head, "|" + "---|" * (3 + 2 * len(METRICS) + 1)]
    for cid in ids:
        c = cells[cid]
        cmp = c.get(against)
        comp_label = (cells[c["comparator"]]["label"] if against == "vs_comparator" and c.get("comparator")
                      else "vanilla KD" if cmp else "")
        if show_test or c.get("chosen", True):
            absolute = [fmt_abs(c["test"][m]) for m in METRICS]
            deltas = [fmt_ci(cmp[m]) if cmp else "" for m in METRICS]
        else:
            absolute = ["(not chosen)"] * len(METRICS)
            deltas = [""] * len(METRICS)
        label = c["label"] if c["setting"] == "main" or c["group"] not in ("labels", "teacher") else \
            f"{rep['settings'][c['setting']]['title']}: {c['label']}"
        if c["setting"] == "main" and c["group"] not in ("labels", "teacher") and ids and \
                rep["cells"][ids[-1]]["group"] in ("labels", "teacher"):
            label = f"{rep['settings']['main']['title']}: {c['label']}"
        lines.append(f"| {label} | `{c['spec']}` | {c['n_seeds']} | " + " | ".join(absolute) + " | " + " | ".join(deltas)
                     + f" | {comp_label} |")
    return lines


def verdict_lines(rep: dict, ids: Sequence[str], against: str = "vs_comparator", settings: bool = False) -> List[str]:
    """One line per comparison: the interval rule's verdict per metric (``settings``: name each
    cell's trainer setting, for the tables that mix settings)."""
    out = []
    for cid in ids:
        c = dict(rep["cells"][cid])
        cmp = c.get(against)
        if not cmp:
            continue
        if settings:
            c["label"] = f"{rep['settings'][c['setting']]['title']}: {c['label']}"
        ref = (rep["cells"][c["comparator"]]["label"] if against == "vs_comparator" else
               "the baseline" if against == "vs_baseline" else "vanilla KD")
        n, planned = len(cmp["seeds"]), len(rep["meta"]["seeds"])
        if n < planned:  # a cell the run did not finish: numbers shown, no verdict drawn
            parts = [f"{METRIC_NAMES[m]} {fmt_ci(cmp[m])}" for m in METRICS]
            out.append(f"- {c['label']} vs {ref}: only {n} of {planned} seeds, no verdict: " + "; ".join(parts))
            continue
        parts = [f"{METRIC_NAMES[m]} {verdict(cmp[m])} ({fmt_ci(cmp[m])})" for m in METRICS]
        out.append(f"- {c['label']} vs {ref}: " + "; ".join(parts))
    return out


VERDICT_START, VERDICT_END = "<!-- verdict:start -->", "<!-- verdict:end -->"


def markdown(rep: dict, img_rel: str, old_text: str = "") -> str:
    meta, cells = rep["meta"], rep["cells"]
    kept = ""
    if VERDICT_START in old_text and VERDICT_END in old_text:
        kept = old_text[old_text.index(VERDICT_START): old_text.index(VERDICT_END) + len(VERDICT_END)]
    if not kept:
        kept = f"{VERDICT_START}\n(verdicts: to be written from the tables below)\n{VERDICT_END}"
    n_cells, n_seeds = len(cells), len(meta["seeds"])
    env = meta["environment"]
    short = [cid for cid, c in cells.items() if c["n_seeds"] < n_seeds]
    n_intervals = sum(("vs_comparator" in c) + ("vs_kd" in c and c.get("comparator") != c["kd"]) for c in cells.values())
    invs = meta["ledger"]["invocations"]
    short_txt = ", ".join(f"`{c}` ({cells[c]['n_seeds']})" for c in short)
    if meta.get("complete", True):
        status = f"The grid ran to completion: every cell has all {n_seeds} seeds."
    else:
        status = (f"**The grid was cut short**: {meta['finished_cell_seeds']} of {meta['planned_cell_seeds']} "
                  f"(cell, seed) results finished; {len(short)} cell(s) have fewer than {n_seeds} seeds "
                  f"({short_txt}). Their intervals are over the "
                  "seeds they have (the tables give n); no verdict is drawn from them. Rerunning the same command trains "
                  "only what is missing.")
    main_teacher = rep["settings"].get("main", {}).get("stages", {}).get("teacher", {}).get("test_mean", {})
    trained_by = next((i["argv"] for i in reversed(invs) if i.get("argv") is not None), meta["argv"])
    lines = [
        "# Does RADI help, and when? Ablations on the synthetic benchmark",
        "",
        f"**{n_cells} cells x {n_seeds} seeds** (seeds {', '.join(map(str, meta['seeds']))}) in "
        f"{len(rep['settings'])} trainer settings, trained by `python bench/ablations.py {' '.join(trained_by)}` "
        "(resumed across the invocations below; `--collect` gathered the JSON, `--report` wrote this page and the "
        f"plots) on {env['machine']}, torch {env['torch']}, radi_fast {env['radi_fast']}, one thread per trainer "
        f"process, {meta['jobs']} trainer processes at a time under `nice -n 5`, the machine shared with other "
        f"developers' jobs. Code: commit `{env['commit'][:10]}`{' (with uncommitted changes)' if env['dirty'] else ''}"
        + (f" (radi_fast/ unchanged since `{meta['radi_fast_last_change'][:10]}`)" if meta.get("radi_fast_last_change")
           else "") + ". Every per-seed number, the versions and the commits: "
        "[bench/results/ablations.json](../bench/results/ablations.json).",
        "",
        f"**Wall time of the run: {meta['wall_seconds'] / 60:.1f} minutes** "
        f"({meta['cpu_seconds_trainer_calls'] / 60:.1f} CPU minutes in the trainer calls), over "
        f"{len(invs)} invocation(s) on the same folders:",
        "",
        *[f"- {i['started'][:16].replace('T', ' ')} UTC, {(i.get('wall_seconds') or 0) / 60:.1f} min"
          + (f": {i['note']}" if i.get("note") else "") for i in invs],
        "",
        status,
        "",
        "**The benchmark, trimmed to fit the time budget** (trimmed in size and cells, never in seeds): the synthetic "
        f"benchmark (docs/training.md) with `{' '.join(meta['base_flags'])}`, every other setting the trainer's "
        "default (teacher and individual initialisation 10 epochs, 1,000 validation and 1,000 test questions). Its "
        "models are weaker than the default run's"
        + (f" (the teacher's test Acc@1 {main_teacher['acc1']:.1f} here against 24.3 at full size)" if main_teacher
           else "") + ". Cut from the planned grid: " + "; ".join(meta.get("trimmed", [])) + ".",
        "",
        "**Statistics.** " + rep["statistics"][0].upper() + rep["statistics"][1:] + ". "
        "Absolute numbers are test means ± the half-width of their 95% t-interval over seeds; "
        "Δ columns are the paired differences to the comparator named in the last column (percentage points), "
        "mean [95% CI]. Many comparisons are made here (" + str(n_intervals) + " intervals per metric): at 95% about one in "
        "twenty excludes 0 by chance alone, so a lone interval that barely excludes 0 is weak evidence.",
        "",
        "**Hyperparameters.** Fixed in advance (bench/ablations.py: the grid"
        + (", the list-loss weights matched to ListNet's loss value at initialisation"
           if any(c["group"] == "list_loss" for c in cells.values()) else "")
        + ") except the weights of the combined objectives, "
        + rep["selection_rule"].split(": ", 1)[1] + ". Validation (1,000 questions) chose nothing else; the "
        "test split is reported once per final setting.",
        "",
        "## Verdicts",
        "",
        kept,
        "",
        f"![Summary: paired differences to vanilla KD with 95% CIs]({img_rel}/ablations_summary.png)",
        "",
    ]
    groups: Dict[str, List[str]] = {}
    for cid, c in cells.items():
        groups.setdefault(c["group"], []).append(cid)
    for g, title in GROUPS.items():
        ids = groups.get(g, [])
        if not ids:
            continue
        lines += [f"## {title}", ""]
        if g == "reference":
            lines += ["Stage 1 (test, mean over seeds): " + "; ".join(
                f"{s['title']}: teacher Acc@1 {s['stages']['teacher']['test_mean']['acc1']:.1f} / Hit@5 "
                f"{s['stages']['teacher']['test_mean']['hit5']:.1f}, individual init Acc@1 "
                f"{s['stages']['individual']['test_mean']['acc1']:.1f}" for name, s in rep["settings"].items()), ""]
            lines += cell_table(rep, ids, "vs_kd")
        elif g == "combined":
            lines += ["Candidates and their validation score (Acc@1 + Hit@5 + nDCG@5, mean over seeds); the "
                      "chosen one per family is reported on test:", ""]
            for fam, sel in rep["selection"].items():
                lines.append(f"- `{fam}`: " + ", ".join(
                    f"{cells[cid]['label']} {sel['val_score'][cid]:.2f}" + (" **(chosen)**" if cid == sel["chosen"]
                                                                            else "")
                    for cid in sel["candidates"]))
            lines += [""] + cell_table(rep, ids, show_test=False)
            ids = [cid for cid in ids if cells[cid].get("chosen", True)]
        elif g in ("labels", "teacher"):
            main_ids = ["baseline", "kd", "radi_p", "radi_l"] if g == "labels" else ["kd", "radi_p", "radi_l"]
            lines += [f"Each setting has its own teacher, initialisation and KD; the main setting's rows are the "
                      f"{'top-1 label' if g == 'labels' else '10-epoch teacher'} point.", ""]
            ids = [i for i in main_ids if i in cells and i != "kd"] + ids
            lines += cell_table(rep, ids, "vs_kd")
        else:
            lines += cell_table(rep, ids)
        lines += ["", "Reading (interval rule):", ""]
        lines += verdict_lines(rep, ids, "vs_kd" if g in ("reference", "labels", "teacher") else "vs_comparator",
                               settings=g in ("labels", "teacher"))
        if g in ("reference", "teacher"):
            vb = [i for i in ids if "vs_baseline" in cells[i]] if g == "teacher" else [
                i for i in cells if "vs_baseline" in cells[i] and cells[i]["setting"] == "main"
                and (i in ("kd", "radi_p", "radi_l") or (cells[i]["group"] == "combined" and cells[i].get("chosen")))]
            if vb:
                lines += ["", "Against the baseline (continued training on the labels; the paper's Table 2 claim is "
                          "RADI > baseline)" + (": the teacher settings keep main's student initialisation, the very "
                                                "same model on every seed, so main's baseline applies" if g == "teacher"
                                                else "") + ":", ""]
                lines += verdict_lines(rep, vb, "vs_baseline", settings=g == "teacher")
        if g not in ("reference", "labels", "teacher", "combined"):
            lines += ["", "Against vanilla KD:", ""] + verdict_lines(
                rep, [i for i in ids if cells[i].get("comparator") != cells[i]["kd"]], "vs_kd")
        if os.path.exists(os.path.join(meta["img_dir"], f"ablation_{g}.png")):
            lines += ["", f"![{title}]({img_rel}/ablation_{g}.png)"]
        lines.append("")
    lines += ["## Reproducing one cell", "",
              "Each cell is one `python -m radi_fast.train` command (its comparator trained beside it in a fresh "
              "folder: the same seed gives the same numbers as the grid, as tests/test_ablations.py checks on a toy "
              "grid); "
              "`python bench/ablations.py --cells ID` runs it inside the grid's folders instead.", "",
              "| cell | command |", "|---|---|"]
    for cid, c in cells.items():
        lines.append(f"| `{cid}` | `{c['command']}` |")
    lines += ["", "Time per setting (the trainer calls of the ledger, summed over seeds; CPU seconds, one thread "
              "per process; wall seconds on the shared machine):", "",
              "| setting | trainer calls | cells x seeds | wall (s) | CPU (s) |", "|---|---|---|---|---|"]
    per: Dict[str, List[float]] = {}
    for e in meta["ledger"]["calls"]:
        acc = per.setdefault(e["setting"], [0, 0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += len(e["specs"])
        acc[2] += e["wall_seconds"]
        acc[3] += e["cpu_seconds"]
    for name, (calls, n, wall, cpu) in per.items():
        lines.append(f"| {name} | {calls} | {n} | {wall:.0f} | {cpu:.0f} |")
    lines.append("")
    return "\n".join(lines)


def save_figure(fig, img_dir: str, name: str) -> str:
    """Lay out, write as a 110-dpi PNG and close ``fig``; its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = os.path.join(img_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(rep: dict, img_dir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    cells, written = rep["cells"], []
    os.makedirs(img_dir, exist_ok=True)
    colours = {"acc1": "#1f77b4", "hit5": "#ff7f0e", "ndcg5": "#2ca02c"}

    def bars(ax, ids, key, title):
        n = len(ids)
        width = 0.26
        for k, m in enumerate(METRICS):
            xs = [i + (k - 1) * width for i in range(n)]
            means = [cells[cid][key][m]["mean"] for cid in ids]
            halves = [cells[cid][key][m]["half_width"] for cid in ids]
            ax.bar(xs, means, width, yerr=halves, capsize=2, color=colours[m], label=METRIC_NAMES[m])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(n))
        planned = len(rep["meta"]["seeds"])
        ax.set_xticklabels([cells[cid]["label"] + (f"\n(only {len(cells[cid][key]['seeds'])} seeds)"
                                                   if len(cells[cid][key]["seeds"]) < planned else "")
                            for cid in ids], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("Δ (points), 95% CI")
        ax.set_title(title, fontsize=10)

    groups: Dict[str, List[str]] = {}
    for cid, c in cells.items():
        groups.setdefault(c["group"], []).append(cid)
    for g, ids in groups.items():
        if g == "reference":
            ids = [i for i in ids if "vs_kd" in cells[i]]
        if g in ("labels", "teacher"):
            continue
        with_comp = [i for i in ids if "vs_comparator" in cells[i] and cells[i]["comparator"] != "kd"]
        with_kd = [i for i in ids if "vs_kd" in cells[i] and cells[i].get("chosen", True)]
        panels = ([(with_comp, "vs_comparator", "vs " + cells[cells[with_comp[0]]["comparator"]]["label"])]
                  if with_comp else []) + ([(with_kd, "vs_kd", "vs vanilla KD")] if with_kd else [])
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(4 + 1.0 * sum(len(p[0]) for p in panels), 4.2),
                                 squeeze=False)
        for ax, (pids, key, title) in zip(axes[0], panels):
            bars(ax, pids, key, title)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(GROUPS[g], fontsize=11)
        written.append(save_figure(fig, img_dir, f"ablation_{g}.png"))

    # gain over KD against label scarcity and teacher quality
    def curve_points(group, scheme):
        pts = []
        main_x = {"labels": 1, "teacher": rep["meta"].get("main_teacher_epochs", MAIN_TEACHER_EPOCHS)}[group]
        if scheme in cells and "vs_kd" in cells[scheme] and any(cells[c]["group"] == group for c in cells):
            pts.append((main_x, cells[scheme]["vs_kd"]))
        for cid, c in cells.items():
            if c["group"] == group and c["spec"] == scheme and "vs_kd" in c:
                pts.append((c["x"], c["vs_kd"]))
        return sorted(pts, key=lambda p: p[0])

    def label_ticks():
        xs = sorted({p[0] for p in curve_points("labels", "radi_p")} | {1})
        return xs, [{1: "1", 2: "2", 3: "all"}[int(x)] for x in xs]

    def gain_axes(axes_row, group, xlabel, xticks=None):
        for ax, m in zip(axes_row, METRICS):
            for scheme, style in (("radi_p", "o-"), ("radi_l", "s-"), ("baseline", "^:")):
                pts = curve_points(group, scheme)
                if not pts:
                    continue
                off = {"radi_p": -0.05, "radi_l": 0.05, "baseline": 0.0}[scheme]
                xs = [p[0] + off * (1 if group == "labels" else p[0] / 3) for p in pts]
                ax.errorbar(xs, [p[1][m]["mean"] for p in pts], yerr=[p[1][m]["half_width"] for p in pts],
                            fmt=style, capsize=3, label={"radi_p": "RADI-P − KD", "radi_l": "RADI-L − KD",
                                                         "baseline": "baseline − KD"}[scheme])
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xlabel(xlabel)
            ax.set_title(METRIC_NAMES[m], fontsize=10)
            if xticks:
                ax.set_xticks(xticks[0])
                ax.set_xticklabels(xticks[1])
        axes_row[0].set_ylabel("gain over KD (points), 95% CI")

    for group, xlabel, xticks in (("labels", "labels kept per training question", label_ticks()),
                                  ("teacher", "teacher training epochs", None)):
        if not any(c["group"] == group for c in cells.values()):
            continue
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
        gain_axes(axes, group, xlabel, xticks)
        if group == "teacher":
            for ax in axes:
                ax.set_xscale("log")
                ticks = sorted({p[0] for p in curve_points("teacher", "radi_p")})
                ax.set_xticks(ticks)
                ax.set_xticklabels([str(int(t)) for t in ticks])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes[0].legend(fontsize=8)
        fig.suptitle(GROUPS[group], fontsize=11)
        written.append(save_figure(fig, img_dir, f"gain_vs_{group}.png"))

    # the summary (README): the main schemes vs KD; gain vs labels; gain vs teacher epochs
    main = [i for i in ("baseline", "radi_p", "radi_l") if i in cells]
    main += [i for i in cells if cells[i]["group"] == "combined" and cells[i].get("chosen")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    bars(axes[0], main, "vs_kd", "main setting: scheme − vanilla KD")
    axes[0].legend(fontsize=8)
    for ax, group, xlabel, xt in ((axes[1], "labels", "labels kept per training question", label_ticks()),
                                  (axes[2], "teacher", "teacher training epochs", None)):
        for scheme, style in (("radi_p", "o-"), ("radi_l", "s-")):
            pts = curve_points(group, scheme)
            for k, m in enumerate(METRICS):
                if not pts:
                    continue
                xs = [p[0] * (1 + 0.04 * (k - 1)) if group == "teacher" else p[0] + 0.06 * (k - 1) for p in pts]
                ax.errorbar(xs, [p[1][m]["mean"] for p in pts], yerr=[p[1][m]["half_width"] for p in pts],
                            fmt=style, color=colours[m], capsize=2, alpha=0.9 if scheme == "radi_p" else 0.55,
                            label=f"{'RADI-P' if scheme == 'radi_p' else 'RADI-L'} {METRIC_NAMES[m]}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_title("RADI − vanilla KD vs " + ("labels kept" if group == "labels" else "the teacher's epochs")
                     + " (95% CI)", fontsize=10)
        if xt:
            ax.set_xticks(xt[0])
            ax.set_xticklabels(xt[1])
        elif pts:
            ax.set_xscale("log")
            ax.set_xticks([p[0] for p in pts])
            ax.set_xticklabels([str(int(p[0])) for p in pts])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7, ncol=2)
    written.append(save_figure(fig, img_dir, "ablations_summary.png"))
    return written


def write_report(rep: dict, docs: str, img_dir: str) -> None:
    rep["meta"]["img_dir"] = img_dir
    written = plots(rep, img_dir)
    old = open(docs).read() if os.path.isfile(docs) else ""
    img_rel = os.path.relpath(img_dir, os.path.dirname(os.path.abspath(docs)))
    md = markdown(rep, img_rel, old)
    for group in ("labels", "teacher"):
        png = os.path.join(img_dir, f"gain_vs_{group}.png")
        if png in written:
            md = md.replace(f"## {GROUPS[group]}\n", f"## {GROUPS[group]}\n\n![gain over KD vs {group}]"
                                                     f"({img_rel}/gain_vs_{group}.png)\n", 1)
    os.makedirs(os.path.dirname(os.path.abspath(docs)), exist_ok=True)
    with open(docs, "w") as f:
        f.write(md)
    print(f"wrote {docs} and {len(written)} plot(s) in {img_dir}")




def main(argv=None) -> int:
    import json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=os.path.join(HERE, "results", "ablations.json"))
    p.add_argument("--docs", default=os.path.join(ROOT, "docs", "results.md"))
    p.add_argument("--img", default=os.path.join(ROOT, "docs", "img"))
    args = p.parse_args(argv)
    with open(args.json) as f:
        rep = json.load(f)
    write_report(rep, args.docs, args.img)
    return 0


if __name__ == "__main__":
    sys.exit(main())
