"""Does RADI help, and when? (issue 14) The paper's Table 3 ablations, KD + RADI, and label scarcity,
on the synthetic benchmark, over >= 5 seeds, with paired differences and 95% t-intervals.

    python bench/ablations.py                          # the whole grid (resumable: rerun it to continue)
    python bench/ablations.py --list                   # the cells, their comparators and command lines; runs nothing
    python bench/ablations.py --cells p_uniform        # one cell (and its comparators: here radi_p and kd)
    python bench/ablations.py --groups labels,teacher  # whole question groups (see --list)
    python bench/ablations.py --jobs 2                 # two (setting, seed) units at a time (CPU cores)
    python bench/ablations.py --report                 # only rewrite docs/results.md and the plots from the JSON
    python bench/ablations.py --tiny --seeds 0,1 --runs /tmp/t --out /tmp/t   # a seconds-long smoke grid

What a run is. A *cell* is one stage-2 scheme spec (``--schemes``) in one *setting* (trainer flags:
the benchmark's size, the labels kept, the teacher's epochs). For every setting and seed the
script runs the trainer in-process on ``<runs>/<setting>/seed<S>`` with ``--resume``, so that
the stage-1 checkpoints (teacher, individual initialisation) of a seed are trained once and
reused by every cell of that setting, and every student of a seed starts from the same weights,
data order and loss seed: the cells of a seed differ only in their objective. Re-running skips
every (setting, seed) whose results.json already holds all its cells; a killed run continues
from the trainer's last checkpoint. Every cell is reproducible on its own with the
``python -m radi_fast.train ...`` command that ``--list`` prints and the report records
(``--schemes <comparator>,<cell>``, in a fresh ``--out_dir``: the numbers come out the same).

Statistics. For each cell and metric the *paired* difference to its comparator on the same seed
(same teacher, same initialisation), then the mean over seeds and its 95% confidence interval from
Student's t distribution with n - 1 degrees of freedom: mean +- t_{0.975, n-1} * sd / sqrt(n). The
comparator is vanilla KD for most cells, RADI-P with OT margins for the other margin modes, and the
default (RADI-P m = 10, lam auto; RADI-L Zipf, hot 100, cold 10, ListNet) for the grids around it;
every cell's difference to KD is recorded as well. An interval that contains 0 is a tie.

Hyperparameters. The grid's settings are fixed in advance (below); the only choice made from
results is the weight pair of each combined objective (KD + RADI-P, KD + RADI-L): the candidate
with the best validation score (Acc@1 + Hit@5 + nDCG@5 of the last epoch, averaged over seeds) is
chosen, and only the chosen one's test numbers are reported in docs/results.md (the JSON keeps
every number). The list losses' weights are scaled to ListNet's loss value at the student's
initialisation (measured on training batches, see LIST_LOSS_WEIGHTS), not tuned.

Outputs: ``<out>/ablations.json`` (every per-seed number, versions, commit, wall and CPU time),
``<docs>`` (docs/results.md: tables, verdicts, plots) and the PNGs in ``<img>`` (docs/img/).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

METRICS = ("acc1", "hit5", "ndcg5")
METRIC_NAMES = {"acc1": "Acc@1", "hit5": "Hit@5", "ndcg5": "nDCG@5"}
LEVEL = 0.95

# ------------------------------------------------------------------------------------------- the grid
# The benchmark, trimmed to fit ~90 CPU minutes for the whole grid on 2 cores: half the training
# questions of the default (2500 of 5000) and 4 student epochs instead of 6; the teacher and the
# individual initialisation keep their 10 epochs, validation and test their 1000 questions each.
BASE = ["--n_train", "2500", "--student_epochs", "4"]
TINY = ["--n_train", "64", "--n_val", "48", "--n_test", "48", "--n_answers", "120", "--d_model", "16",
        "--n_heads", "2", "--batch_size", "32", "--teacher_epochs", "2", "--student_epochs", "1",
        "--mc_samples", "3", "--hot", "10", "--cold", "5", "--top_k", "20"]
MAIN_TEACHER_EPOCHS = 10  # the teacher (and individual) epochs of BASE: the trainer's default

# RADI-L list losses: weights that put each loss at ListNet's value (4.0) at the student
# initialisation (seed 0 of BASE, 10 training batches of 64, hot 100 + cold 10, Zipf; ratios
# ListNet / loss: ListMLE 0.0108 (loss 372), STListNet 0.93 (4.3), RankNet 0.0010 (4008),
# NDCG-Loss2++ 0.21 (19.5)), rounded to one significant digit. RADI-L's own weight is 1.
LIST_LOSS_WEIGHTS = {"listmle": 0.01, "stlistnet": 1.0, "ranknet": 0.001, "ndcg_loss2pp": 0.2}
# RADI-P margin modes at the same *mean* margin as OT's: W's rows sum to 1 there, so OT's mean
# margin is m / (K - 1) = 10 / 99 ~ 0.1; uniform W = 1 -> m = 0.1; random W ~ U[0, 1] (mean 0.5)
# -> m = 0.2; uncertainty W = 1 / (U + 1e-6) has mean ~20 on that teacher's top 100 -> m = 0.005.
MEAN_MATCHED_MARGIN = {"uniform": 0.1, "random": 0.2, "uncertainty": 0.005}


@dataclass
class Setting:
    name: str
    flags: List[str]
    title: str


@dataclass
class Cell:
    id: str
    group: str
    setting: str
    spec: str
    label: str
    comparator: Optional[str] = None  # a cell id of the same setting; None: a reference (kd, baseline)
    family: Optional[str] = None      # combined objectives: candidates of one family, one is chosen on validation
    x: Optional[float] = None         # where a label-scarcity / teacher-quality cell sits on its plot's axis


GROUPS = {
    "reference": "Reference schemes (no ablation)",
    "margin_modes": "Q1a. RADI-P margin modes (Table 3, upper part)",
    "margin_grid": "Q1b. RADI-P margin m and Sinkhorn lam (OT margins)",
    "sampling": "Q2a. RADI-L cold-list sampling (Table 3, lower part)",
    "hot_cold": "Q2b. RADI-L hot and cold list sizes",
    "list_loss": "Q2c. RADI-L list losses (Figure 4)",
    "combined": "Q3. KD + RADI combined objectives",
    "labels": "Q4a. Label scarcity: labels kept per training question",
    "teacher": "Q4b. Teacher quality: the teacher's training epochs",
}


def build_grid(tiny: bool = False):
    """The settings and cells (``--tiny``: the same structure, fewer cells, a toy benchmark)."""
    base = TINY if tiny else BASE
    te = 2 if tiny else MAIN_TEACHER_EPOCHS
    few, many = (1, 4) if tiny else (3, 20)
    settings = {
        "main": Setting("main", list(base), "top-1 label, teacher 10 epochs"),
        "labels_top2": Setting("labels_top2", base + ["--train_labels", "top2"], "two most frequent labels kept"),
        "labels_all": Setting("labels_all", base + ["--train_labels", "all"], "every annotated answer kept"),
        "teacher_few": Setting("teacher_few", base + ["--teacher_epochs", str(few), "--individual_epochs", str(te)],
                               f"teacher trained {few} epochs (student initialisation unchanged: {te} epochs)"),
        "teacher_many": Setting("teacher_many", base + ["--teacher_epochs", str(many), "--individual_epochs", str(te)],
                                f"teacher trained {many} epochs (student initialisation unchanged: {te} epochs)"),
    }
    C = Cell
    cells = [C("baseline", "reference", "main", "baseline", "baseline (continued training)"),
             C("kd", "reference", "main", "kd", "vanilla KD"),
             C("radi_p", "margin_modes", "main", "radi_p", "RADI-P (OT margins, m 10)", "kd"),
             C("radi_l", "sampling", "main", "radi_l", "RADI-L (Zipf, ListNet)", "kd")]
    for mode in ("uniform", "random", "uncertainty"):
        cells.append(C(f"p_{mode}", "margin_modes", "main", f"radi_p:margin_mode={mode}", f"{mode} (m 10)", "radi_p"))
        m = MEAN_MATCHED_MARGIN[mode]
        cells.append(C(f"p_{mode}_mm", "margin_modes", "main", f"radi_p:margin_mode={mode}:margin={m}",
                       f"{mode} (m {m}: OT's mean margin)", "radi_p"))
    cells += [C("p_m0.1", "margin_grid", "main", "radi_p:margin=0.1", "OT, m 0.1", "radi_p"),
              C("p_m1", "margin_grid", "main", "radi_p:margin=1", "OT, m 1", "radi_p"),
              C("p_lam0.3", "margin_grid", "main", "radi_p:lam_scale=0.3", "OT, lam 0.3 x auto", "radi_p")]
    for s in ("full", "random", "exp"):
        cells.append(C(f"l_{s}", "sampling", "main", f"radi_l:sampling={s}", f"{s} list" if s == "full" else s,
                       "radi_l"))
    for k, v in (("hot", 50), ("hot", 200), ("cold", 5), ("cold", 20)):
        cells.append(C(f"l_{k}{v}", "hot_cold", "main", f"radi_l:{k}={v}", f"{k} {v}", "radi_l"))
    for loss, w in LIST_LOSS_WEIGHTS.items():
        spec = f"radi_l:list_loss={loss}" + (f":alpha={w:g}" if w != 1 else "")
        cells.append(C(f"l_{loss}", "list_loss", "main", spec, f"{loss} (weight {w:g})", "radi_l"))
    cells += [C("kp_sum", "combined", "main", "kd_radi_p", "KD + RADI-P (weights 1 + 3)", "kd", "kd_radi_p"),
              C("kp_half", "combined", "main", "kd_radi_p:kd_alpha=0.5:radi_p_alpha=1.5",
                "KD + RADI-P (weights 0.5 + 1.5)", "kd", "kd_radi_p"),
              C("kl_sum", "combined", "main", "kd_radi_l", "KD + RADI-L (weights 1 + 1)", "kd", "kd_radi_l"),
              C("kl_half", "combined", "main", "kd_radi_l:kd_alpha=0.5:radi_l_alpha=0.5",
                "KD + RADI-L (weights 0.5 + 0.5)", "kd", "kd_radi_l")]
    for setting, group, x in (("labels_top2", "labels", 2), ("labels_all", "labels", 3),
                              ("teacher_few", "teacher", few), ("teacher_many", "teacher", many)):
        cells += [C(f"{setting}/baseline", group, setting, "baseline", "baseline", "kd", x=x),
                  C(f"{setting}/kd", group, setting, "kd", "vanilla KD", x=x),
                  C(f"{setting}/radi_p", group, setting, "radi_p", "RADI-P", "kd", x=x),
                  C(f"{setting}/radi_l", group, setting, "radi_l", "RADI-L", "kd", x=x)]
    if tiny:  # every group and setting, fewer cells
        keep = {"baseline", "kd", "radi_p", "radi_l", "p_uniform", "p_lam0.3", "l_exp", "kp_sum", "kp_half",
                "labels_all/kd", "labels_all/radi_p", "teacher_few/kd", "teacher_few/radi_l"}
        cells = [c for c in cells if c.id in keep]
        settings = {k: v for k, v in settings.items() if any(c.setting == k for c in cells)}
    return settings, cells


def comparator_id(c: Cell) -> Optional[str]:
    if c.comparator is None:
        return None
    return c.comparator if c.setting == "main" else f"{c.setting}/{c.comparator}"


def kd_id(c: Cell) -> str:
    return "kd" if c.setting == "main" else f"{c.setting}/kd"


def with_comparators(cells: List[Cell], chosen: Sequence[str]) -> List[Cell]:
    """``chosen`` cells plus, recursively, their comparators and their setting's KD."""
    by_id = {c.id: c for c in cells}
    want, todo = set(), list(chosen)
    while todo:
        cid = todo.pop()
        if cid in want:
            continue
        if cid not in by_id:
            raise SystemExit(f"unknown cell {cid!r}; python bench/ablations.py --list shows them")
        want.add(cid)
        c = by_id[cid]
        todo += [x for x in (comparator_id(c), kd_id(c)) if x]
    return [c for c in cells if c.id in want]


def run_dir(runs: str, setting: str, seed: int) -> str:
    return os.path.join(runs, setting, f"seed{seed}")


def train_flags(setting: Setting, seed: int, specs: Sequence[str], out_dir: str) -> List[str]:
    return [*setting.flags, "--seed", str(seed), "--schemes", ",".join(specs), "--out_dir", out_dir]


def command(setting: Setting, cell: Cell, comparator: Optional[Cell], seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> str:
    """The shell command that reproduces a cell (and its comparator) for ``seeds`` in fresh folders."""
    specs = ([comparator.spec] if comparator else []) + [cell.spec]
    flags = train_flags(setting, 0, specs, "runs/repro/" + cell.id.replace("/", "-") + "/seed$s")
    flags[flags.index("--seed") + 1] = "$s"
    return f"for s in {' '.join(map(str, seeds))}; do python -m radi_fast.train " + " ".join(
        a if a.startswith("$") or "$s" in a else shlex.quote(a) for a in flags) + "; done"


# ------------------------------------------------------------------------------------------- statistics
def t_interval(values: Sequence[float], level: float = LEVEL) -> dict:
    """Mean, sample sd and the ``level`` t-interval of the mean of ``values`` (n - 1 degrees of freedom)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "t": float("nan"), "half_width": float("nan"),
                "ci": [float("nan"), float("nan")], "level": level}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = float(stats.t.ppf(0.5 + level / 2, n - 1))
    half = t * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "t": t, "half_width": half, "ci": [mean - half, mean + half],
            "level": level}


def verdict(ci: dict, better: str = "better", worse: str = "worse") -> str:
    lo, hi = ci["ci"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    return better if lo > 0 else worse if hi < 0 else "tie"


def paired(per_seed_a: Dict[int, dict], per_seed_b: Dict[int, dict], split: str = "test") -> dict:
    seeds = sorted(set(per_seed_a) & set(per_seed_b))
    out = {"seeds": seeds}
    for m in METRICS:
        d = [per_seed_a[s][split][m] - per_seed_b[s][split][m] for s in seeds]
        out[m] = {"diffs": d, **t_interval(d)}
    return out


# ------------------------------------------------------------------------------------------- running
def environment() -> dict:
    import numpy
    import scipy
    import torch

    import radi_fast

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""
    return {"radi_fast": radi_fast.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "scipy": scipy.__version__, "python": platform.python_version(),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible",
            "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "backend": radi_fast.backend_info()}


def unit_status(setting: Setting, seed: int, specs: Sequence[str], runs: str) -> List[str]:
    """The specs of a (setting, seed) unit still to train. Raises when its folder holds a run with
    other settings (a changed grid must go to another ``--runs`` folder)."""
    from radi_fast.config import parse_args, resolve_auto
    from radi_fast.rundir import config_diff

    out = run_dir(runs, setting.name, seed)
    path = os.path.join(out, "results.json")
    if not os.path.isfile(path):
        return list(specs)
    with open(path) as f:
        res = json.load(f)
    cfg = resolve_auto(parse_args(train_flags(setting, seed, specs, out)))
    diff = config_diff(res.get("config", {}), cfg)
    if diff:
        raise SystemExit(f"{out} holds a run with other settings ({'; '.join(diff)}): use another --runs folder")
    return [s for s in specs if "test" not in res.get("schemes", {}).get(s, {})]


def run_unit(job: dict) -> dict:
    """Train the missing specs of one (setting, seed) unit in this process; its wall and CPU time."""
    from radi_fast import train as T
    from radi_fast.config import parse_args

    flags = job["flags"] + ["--resume", "--no-progress", "--no-curves"]
    print(f"== {job['setting']} seed {job['seed']}: {len(job['specs'])} scheme(s): python -m radi_fast.train "
          + " ".join(shlex.quote(a) for a in flags), flush=True)
    w0, c0 = time.time(), time.process_time()
    T.run(parse_args(flags))
    return {"setting": job["setting"], "seed": job["seed"], "specs": job["specs"], "wall_seconds": time.time() - w0,
            "cpu_seconds": time.process_time() - c0, "finished_at": now()}


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def load_ledger(runs: str) -> dict:
    """``{"calls": [one per finished trainer call], "invocations": [one per finished run of this script]}``,
    kept in ``<runs>/ledger.json`` across interrupted and resumed runs."""
    path = os.path.join(runs, "ledger.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {"calls": [], "invocations": []}


def save_ledger(runs: str, ledger: dict) -> None:
    os.makedirs(runs, exist_ok=True)
    tmp = os.path.join(runs, "ledger.json.tmp")
    with open(tmp, "w") as f:
        json.dump(ledger, f, indent=1)
    os.replace(tmp, os.path.join(runs, "ledger.json"))


def process_tree_cpu() -> float:
    """User + system CPU seconds of this process and its finished (reaped) child processes."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_grid(settings, cells, seeds, runs, jobs) -> dict:
    """Train what is missing, (setting, seed) by (setting, seed); returns the ledger."""
    ledger = load_ledger(runs)
    w0, c0, started = time.time(), process_tree_cpu(), now()
    todo = []
    for name, setting in settings.items():
        specs = [c.spec for c in cells if c.setting == name]
        for seed in seeds:
            missing = unit_status(setting, seed, specs, runs)
            if missing:
                todo.append({"setting": name, "seed": seed, "specs": missing,
                             "flags": train_flags(setting, seed, missing, run_dir(runs, name, seed))})
            else:
                print(f"== {name} seed {seed}: all {len(specs)} scheme(s) done, skipped", flush=True)
    todo.sort(key=lambda j: -len(j["specs"]))  # the longest first: the workers end together
    if jobs > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(jobs, len(todo)), maxtasksperchild=1) as pool:
            for entry in pool.imap_unordered(run_unit, todo):
                ledger["calls"].append(entry)
                save_ledger(runs, ledger)
    else:
        for job in todo:
            ledger["calls"].append(run_unit(job))
            save_ledger(runs, ledger)
    if todo:
        ledger["invocations"].append({"started": started, "finished": now(), "jobs": jobs, "units": len(todo),
                                      "wall_seconds": time.time() - w0,
                                      "cpu_seconds_process_tree": process_tree_cpu() - c0})
        save_ledger(runs, ledger)
    return ledger


# ------------------------------------------------------------------------------------------- collecting
def collect(settings, cells, seeds, runs, meta) -> dict:
    """ablations.json: every per-seed number of every cell, the paired differences and intervals."""
    results = {}
    for name in settings:
        for seed in seeds:
            path = os.path.join(run_dir(runs, name, seed), "results.json")
            with open(path) as f:
                results[(name, seed)] = json.load(f)
    by_id = {c.id: c for c in cells}
    out_settings = {}
    for name, s in settings.items():
        stages = {}
        for stage in ("teacher", "individual"):
            per = {seed: results[(name, seed)]["stages"][stage] for seed in seeds}
            stages[stage] = {"per_seed": [{"seed": seed, "val": per[seed]["val"], "test": per[seed]["test"],
                                           "epochs": len(per[seed]["history"]), "wall_seconds": per[seed]["seconds"]}
                                          for seed in seeds],
                             "test_mean": {m: t_interval([per[seed]["test"][m] for seed in seeds])["mean"]
                                           for m in METRICS}}
        out_settings[name] = {"flags": s.flags, "title": s.title, "stages": stages}
    per_cell = {}
    for c in cells:
        per_cell[c.id] = {seed: results[(c.setting, seed)]["schemes"][c.spec] for seed in seeds}
    out_cells = {}
    for c in cells:
        per = per_cell[c.id]
        comp = comparator_id(c)
        entry = {**dataclasses.asdict(c), "comparator": comp, "kd": kd_id(c),
                 "command": command(settings[c.setting], c, by_id[comp] if comp else None, seeds),
                 "per_seed": [{"seed": seed, "val": per[seed]["val"], "test": per[seed]["test"],
                               "wall_seconds": per[seed]["seconds"]} for seed in seeds],
                 "test": {m: t_interval([per[seed]["test"][m] for seed in seeds]) for m in METRICS},
                 "val_score": t_interval([sum(per[seed]["val"][m] for m in METRICS) for seed in seeds])["mean"]}
        if comp:
            entry["vs_comparator"] = paired(per, per_cell[comp])
        if c.id != kd_id(c):
            entry["vs_kd"] = paired(per, per_cell[kd_id(c)])
        out_cells[c.id] = entry
    selection = {}
    for fam in sorted({c.family for c in cells if c.family}):
        cands = [c.id for c in cells if c.family == fam]
        scores = {cid: out_cells[cid]["val_score"] for cid in cands}
        chosen = max(cands, key=lambda cid: scores[cid])
        selection[fam] = {"candidates": cands, "val_score": scores, "chosen": chosen}
        for cid in cands:
            out_cells[cid]["chosen"] = cid == chosen
    return {"meta": meta, "statistics": (
                f"paired differences over seeds (cell minus comparator on the same seed: same teacher, initialisation, "
                f"data order); mean and {int(LEVEL * 100)}% confidence interval from Student's t with n - 1 degrees of "
                "freedom, mean +- t * sd / sqrt(n); an interval containing 0 is a tie"),
            "selection_rule": ("combined objectives: per family, the candidate with the highest validation score "
                               "(Acc@1 + Hit@5 + nDCG@5 at the last epoch, mean over seeds); only its test numbers "
                               "are reported in docs/results.md"),
            "selection": selection, "settings": out_settings, "cells": out_cells}


# ------------------------------------------------------------------------------------------- the report
def fmt_ci(s: dict, digits: int = 2) -> str:
    if not math.isfinite(s.get("half_width", float("nan"))):
        return f"{s['mean']:+.{digits}f}"
    return f"{s['mean']:+.{digits}f} [{s['ci'][0]:+.{digits}f}, {s['ci'][1]:+.{digits}f}]"


def fmt_abs(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['half_width']:.2f}" if math.isfinite(s.get("half_width", float("nan"))) \
        else f"{s['mean']:.2f}"


def cell_table(rep: dict, ids: Sequence[str], against: str = "vs_comparator", show_test: bool = True) -> List[str]:
    cells = rep["cells"]
    head = "| variant | spec | " + " | ".join(f"test {METRIC_NAMES[m]}" for m in METRICS) + " | " + \
        " | ".join(f"Δ {METRIC_NAMES[m]} [95% CI]" for m in METRICS) + " | vs |"
    lines = [head, "|" + "---|" * (2 + 2 * len(METRICS) + 1)]
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
        lines.append(f"| {label} | `{c['spec']}` | " + " | ".join(absolute) + " | " + " | ".join(deltas)
                     + f" | {comp_label} |")
    return lines


def verdict_lines(rep: dict, ids: Sequence[str], against: str = "vs_comparator") -> List[str]:
    out = []
    for cid in ids:
        c = rep["cells"][cid]
        cmp = c.get(against)
        if not cmp:
            continue
        ref = rep["cells"][c["comparator"]]["label"] if against == "vs_comparator" else "vanilla KD"
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
    lines = [
        "# Does RADI help, and when? Ablations on the synthetic benchmark",
        "",
        f"Generated by `python bench/ablations.py{(' ' + ' '.join(meta['argv'])) if meta['argv'] else ''}` "
        f"(issue 14): **{n_cells} cells x {n_seeds} seeds** (seeds {', '.join(map(str, meta['seeds']))}), "
        f"{len(rep['settings'])} trainer settings, on {meta['environment']['machine']}, torch "
        f"{meta['environment']['torch']}, 1 thread per process, commit `{meta['environment']['commit'][:10]}`"
        f"{' (with uncommitted changes)' if meta['environment']['dirty'] else ''}. "
        f"Training time of the whole grid: **{meta['cpu_seconds'] / 60:.1f} CPU minutes** "
        f"({meta['wall_seconds'] / 60:.1f} minutes of wall time, {meta['jobs']} training process(es) at a time, "
        f"the machine shared with other jobs at nice 10; CPU time is the budget's measure). "
        "Every per-seed number, the versions and the commit: "
        "[bench/results/ablations.json](../bench/results/ablations.json).",
        "",
        "**The benchmark, trimmed to fit the budget** (trimmed in size, never in seeds): the synthetic benchmark "
        f"(docs/training.md) with `{' '.join(meta['base_flags'])}` (for the committed run: 2,500 training questions instead of 5,000, 4 student epochs "
        "instead of 6; teacher and individual initialisation 10 epochs, 1,000 validation and 1,000 test questions, "
        "every other setting the trainer's default). Its models are weaker than the default run's "
        "(the teacher's test Acc@1 "
        f"{rep['settings']['main']['stages']['teacher']['test_mean']['acc1']:.1f} here against 24.3 at full size).",
        "",
        "**Statistics.** " + rep["statistics"][0].upper() + rep["statistics"][1:] + ". "
        "Absolute numbers are test means ± the half-width of their 95% t-interval over seeds; "
        "Δ columns are the paired differences to the comparator named in the last column (percentage points). "
        "Many comparisons are made here (about 40 intervals per metric): at 95% about one in twenty "
        "excludes 0 by chance alone, so a lone interval that barely excludes 0 is weak evidence.",
        "",
        "**Hyperparameters.** Fixed in advance (bench/ablations.py: the grid, the list-loss weights matched to "
        "ListNet's loss value at initialisation, the margin modes' mean-matched margins) except the weights of the "
        "combined objectives, " + rep["selection_rule"].split(": ", 1)[1] + ". Validation (1,000 questions) "
        "chose nothing else; the test split is reported once per final setting.",
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
        lines += verdict_lines(rep, ids, "vs_kd" if g in ("reference", "labels", "teacher") else "vs_comparator")
        if g not in ("reference", "labels", "teacher", "combined"):
            lines += ["", "Against vanilla KD:", ""] + verdict_lines(
                rep, [i for i in ids if cells[i].get("comparator") != cells[i]["kd"]], "vs_kd")
        if os.path.exists(os.path.join(meta["img_dir"], f"ablation_{g}.png")):
            lines += ["", f"![{title}]({img_rel}/ablation_{g}.png)"]
        lines.append("")
    lines += ["## Reproducing one cell", "",
              "Each cell is one `python -m radi_fast.train` command (its comparator trained beside it in a fresh "
              "folder: the same seed gives the same numbers as the grid, checked by tests/test_ablations.py); "
              "`python bench/ablations.py --cells ID` runs it inside the grid's folders instead.", "",
              "| cell | command |", "|---|---|"]
    for cid, c in cells.items():
        lines.append(f"| `{cid}` | `{c['command']}` |")
    lines += ["", "Time per trainer call (the ledger; CPU seconds, one thread):", "",
              "| setting | seed | schemes | wall (s) | CPU (s) |", "|---|---|---|---|---|"]
    for e in meta["ledger"]["calls"]:
        lines.append(f"| {e['setting']} | {e['seed']} | {len(e['specs'])} | {e['wall_seconds']:.0f} | "
                     f"{e['cpu_seconds']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def plots(rep: dict, img_dir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        ax.set_xticklabels([cells[cid]["label"] for cid in ids], rotation=30, ha="right", fontsize=8)
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
        fig.tight_layout()
        path = os.path.join(img_dir, f"ablation_{g}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

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

    for group, xlabel, xticks in (("labels", "labels kept per training question", ([1, 2, 3], ["1", "2", "all"])),
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
        axes[0].legend(fontsize=8)
        fig.suptitle(GROUPS[group], fontsize=11)
        fig.tight_layout()
        path = os.path.join(img_dir, f"gain_vs_{group}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # the summary (README): the main schemes vs KD; gain vs labels; gain vs teacher epochs
    main = [i for i in ("baseline", "radi_p", "radi_l") if i in cells]
    main += [i for i in cells if cells[i]["group"] == "combined" and cells[i].get("chosen")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    bars(axes[0], main, "vs_kd", "main setting: scheme − vanilla KD")
    axes[0].legend(fontsize=8)
    for ax, group, xlabel, xt in ((axes[1], "labels", "labels kept per training question", ([1, 2, 3], ["1", "2", "all"])),
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
        ax.set_title(f"gain over KD vs {group}", fontsize=10)
        if xt:
            ax.set_xticks(xt[0])
            ax.set_xticklabels(xt[1])
        elif pts:
            ax.set_xscale("log")
            ax.set_xticks([p[0] for p in pts])
            ax.set_xticklabels([str(int(p[0])) for p in pts])
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = os.path.join(img_dir, "ablations_summary.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write_report(rep: dict, docs: str, img_dir: str) -> None:
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


# ------------------------------------------------------------------------------------------- main
def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0,1,2,3,4; at least 5 for "
                                                         "the committed results)")
    p.add_argument("--cells", default="", help="comma-separated cell ids (see --list); their comparators are added")
    p.add_argument("--groups", default="", help="comma-separated question groups: " + ", ".join(GROUPS))
    p.add_argument("--jobs", type=int, default=1, help="(setting, seed) units trained at a time, one process each")
    p.add_argument("--runs", default=os.path.join(ROOT, "runs", "ablations"),
                   help="trainer folders, one per setting and seed (checkpoints; default runs/ablations)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="where ablations.json goes")
    p.add_argument("--docs", default=os.path.join(ROOT, "docs", "results.md"), help="the Markdown report")
    p.add_argument("--img", default=os.path.join(ROOT, "docs", "img"), help="where the PNGs go")
    p.add_argument("--list", action="store_true", help="print the cells and their commands; run nothing")
    p.add_argument("--report", action="store_true", help="only rewrite the report and plots from <out>/ablations.json")
    p.add_argument("--no-report", action="store_true", help="write ablations.json but not the Markdown and plots")
    p.add_argument("--tiny", action="store_true", help="a toy benchmark and fewer cells (seconds; for the test)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    json_path = os.path.join(args.out, "ablations.json")
    if args.report:
        with open(json_path) as f:
            rep = json.load(f)
        rep["meta"]["img_dir"] = args.img
        write_report(rep, args.docs, args.img)
        return 0
    settings, cells = build_grid(args.tiny)
    chosen = [c.id for c in cells]
    if args.groups:
        groups = args.groups.split(",")
        bad = [g for g in groups if g not in GROUPS]
        if bad:
            raise SystemExit(f"unknown group(s) {bad}; expected {', '.join(GROUPS)}")
        chosen = [c.id for c in cells if c.group in groups]
    if args.cells:
        chosen = args.cells.split(",")
    cells = with_comparators(cells, chosen)
    settings = {k: v for k, v in settings.items() if any(c.setting == k for c in cells)}
    seeds = [int(s) for s in args.seeds.split(",")]
    by_id = {c.id: c for c in cells}
    if args.list:
        for c in cells:
            comp = comparator_id(c)
            print(f"{c.id:22s} [{c.group}] {c.spec}  (vs {comp or '-'})\n    "
                  f"{command(settings[c.setting], c, by_id[comp] if comp else None, seeds)}")
        print(f"{len(cells)} cells in {len(settings)} setting(s) x {len(seeds)} seeds")
        return 0
    started = now()
    ledger = run_grid(settings, cells, seeds, args.runs, args.jobs)
    meta = {"issue": 14, "argv": argv, "seeds": seeds, "base_flags": TINY if args.tiny else BASE, "jobs": args.jobs,
            "main_teacher_epochs": 2 if args.tiny else MAIN_TEACHER_EPOCHS,
            "started": started, "finished": now(), "environment": environment(),
            "wall_seconds": sum(i["wall_seconds"] for i in ledger["invocations"]),
            "cpu_seconds": sum(i["cpu_seconds_process_tree"] for i in ledger["invocations"]),
            "cpu_seconds_trainer_calls": sum(e["cpu_seconds"] for e in ledger["calls"]),
            "ledger": ledger, "img_dir": args.img,
            "timing_note": ("over every finished invocation of this script on these --runs folders: wall_seconds, "
                            "their wall time; cpu_seconds, the user + system CPU time of their process trees (the "
                            "script and its worker processes: data, training, evaluation, checkpoints); "
                            "cpu_seconds_trainer_calls, the sum of the trainer calls' own process CPU time; an "
                            "invocation killed midway is not counted")}
    rep = collect(settings, cells, seeds, args.runs, meta)
    os.makedirs(args.out, exist_ok=True)
    with open(json_path + ".tmp", "w") as f:
        json.dump(rep, f, indent=1)
    os.replace(json_path + ".tmp", json_path)
    print(f"wrote {json_path}: {len(rep['cells'])} cells x {len(seeds)} seeds, "
          f"{meta['cpu_seconds'] / 60:.1f} CPU min in the ledger")
    if not args.no_report:
        write_report(rep, args.docs, args.img)
    for cid, c in rep["cells"].items():
        for key in ("vs_comparator", "vs_kd"):
            if key in c and not (key == "vs_kd" and c.get("comparator") == c["kd"]):
                print(f"{cid:22s} {key:14s} " + "  ".join(f"{METRIC_NAMES[m]} {fmt_ci(c[key][m])}" for m in METRICS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
