"""Does RADI help, and when? The paper's Table 3 ablations, KD + RADI, and label scarcity,
on the synthetic benchmark, over >= 5 seeds, with paired differences and 95% t-intervals.

    python bench/ablations.py --jobs 2                 # the whole (trimmed) grid of the committed results: 20 cells
                                                       # x 5 seeds, 2 trainer processes; resumable: rerun it
    python bench/ablations.py --full --jobs 2          # the whole planned grid (44 cells, ~2.5x the time)
    python bench/ablations.py --list                   # the cells, their comparators and command lines; runs nothing
    python bench/ablations.py --cells p_uniform        # one cell, all seeds (and its comparators: here radi_p, kd)
    python bench/ablations.py --cells p_uniform --seeds 0 --list   # ... or its plain python -m radi_fast.train command
    python bench/ablations.py --groups labels,teacher  # whole question groups (see --list)
    python bench/ablations.py --collect                # only gather the finished cells into ablations.json
    python bench/ablations.py --report                 # only rewrite docs/results.md and the plots from the JSON
    python bench/ablations.py --tiny --seeds 0,1 --runs /tmp/t --out /tmp/t --docs /tmp/t/r.md --img /tmp/t
                                                       # a seconds-long smoke grid (tests/test_ablations.py)

What a run is. A *cell* is one stage-2 scheme spec (``--schemes``) in one *setting* (trainer flags:
the benchmark's size, the labels kept, the teacher's epochs). For every setting and seed the
script runs the trainer in-process on ``<runs>/<setting>/seed<S>`` with ``--resume``, a few cells
per trainer call, so that the stage-1 checkpoints (teacher, individual initialisation) of a seed
are trained once and reused by every cell of that setting, and every student of a seed starts
from the same weights, data order and loss seed: the cells of a seed differ only in their
objective. After every trainer call (i.e. as cells finish) ``<out>/ablations.json`` is rewritten
from every finished cell, so a killed run still leaves its results; rerunning skips the finished
cells (a killed trainer call continues from its last checkpoint). Every cell is reproducible on
its own with the ``python -m radi_fast.train ...`` command that ``--list`` prints and the report
records (``--schemes <comparator>,<cell>`` in a fresh ``--out_dir``).

Statistics. For each cell and metric the *paired* difference to its comparator on the same seed
(same teacher, same initialisation), then the mean over seeds and its 95% confidence interval from
Student's t distribution with n - 1 degrees of freedom: mean +- t_{0.975, n-1} * sd / sqrt(n). The
comparator is vanilla KD for most cells, RADI-P with OT margins for the other margin modes, and the
default (RADI-P m = 10, lam auto; RADI-L Zipf, hot 100, cold 10, ListNet) for the grids around it;
every cell's difference to KD is recorded as well. An interval that contains 0 is a tie.

Hyperparameters. The grid's settings are fixed in advance (below); the only choice made from
results is the weight pair of each combined objective (KD + RADI-P, KD + RADI-L): the candidate
with the best validation score (Acc@1 + Hit@5 + nDCG@5 of the trained student, averaged over
seeds) is chosen, and only the chosen one's test numbers are reported in docs/results.md (the
JSON keeps every number). The list losses' weights are scaled to ListNet's loss value at the
student's initialisation (see LIST_LOSS_WEIGHTS), not tuned.

Time. The grid was trimmed to fit about an hour of wall time on a shared 2-core machine, seeds
never: measured, a stage 1 (teacher + initialisation) costs ~53 CPU s per setting and seed, a KD
cell ~10 s, RADI-P ~18 s, RADI-L ~9 s; the machine then gave the run only ~0.5 of a core, so the
grid was cut twice (TRIMMED says what went; ``--full`` keeps it). Training goes phase by phase
(PHASES): RADI vs KD, KD + RADI, labels and teacher for every seed first, Table 3's ablations after.

Outputs: ``<out>/ablations.json`` (every per-seed number, versions, commit, wall and CPU time);
with ``--report`` (or at the end of a run unless ``--no-report``) ``<docs>`` (docs/results.md) and
the PNGs in ``<img>`` (docs/img/), written by bench/ablations_report.py.
"""
from __future__ import annotations

import argparse
import contextlib
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
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)  # bench/ablations_report.py, ablation_terms.py

from ablation_terms import GROUPS, MAIN_TEACHER_EPOCHS, METRIC_NAMES, METRICS, verdict  # noqa: E402,F401

LEVEL = 0.95
CELLS_PER_CALL = 4  # cells per trainer call: results.json and ablations.json are refreshed after each call

# ------------------------------------------------------------------------------------------- the grid
# The benchmark, trimmed to fit the budget: half the training questions of the default (2500 of
# 5000) and 4 student epochs instead of 6; the teacher and the individual initialisation keep
# their 10 epochs, validation and test their 1000 questions each.
BASE = ["--n_train", "2500", "--student_epochs", "4"]
TINY = ["--n_train", "64", "--n_val", "48", "--n_test", "48", "--n_answers", "120", "--d_model", "16",
        "--n_heads", "2", "--batch_size", "32", "--teacher_epochs", "2", "--student_epochs", "1",
        "--mc_samples", "3", "--hot", "10", "--cold", "5", "--top_k", "20"]

# RADI-L list losses: weights that put each loss at ListNet's value (4.0) at the student
# initialisation (seed 0 of BASE, 10 training batches of 64, hot 100 + cold 10, Zipf; ratios
# ListNet / loss: ListMLE 0.0108 (loss 372), STListNet 0.93 (4.3), RankNet 0.0010 (4008),
# NDCG-Loss2++ 0.21 (19.5)), rounded to one significant digit. RADI-L's own weight is 1.
LIST_LOSS_WEIGHTS = {"listmle": 0.01, "stlistnet": 1.0, "ranknet": 0.001, "ndcg_loss2pp": 0.2}

# What the time budget cut from the planned grid: these cells are defined (``--full``
# runs them) but were not run for the committed results. The machine gave the run ~0.6 of a core
# (other developers' jobs), so the first full attempt (every cell below but the mean-matched margins
# and hot 200 / cold 5) was stopped after 12 minutes and the grid cut to what fits ~an hour.
TRIMMED = [
    "Q1b: RADI-P margin m 0.1 and 1, lam 0.3 x auto (OT margins)",
    "Q1a: the margin modes at OT's mean margin (uniform m 0.1, random m 0.2, uncertainty m 0.005); "
    "only Table 3's same-m comparison (m 10) was run",
    "Q2b: RADI-L hot / cold list sizes (hot 50, 200; cold 5, 20)",
    "Q2c: the list losses ListMLE, STListNet, RankNet, NDCG-Loss2++ (only ListNet, the default, was run)",
    "Q4a: two labels per question (only 1 and all were run)",
    "Q4b: a teacher trained longer (20 epochs; only 3 and 10 were run)",
    "the baseline (continued training) outside the main setting",
    "the benchmark itself: 2,500 training questions and 4 student epochs instead of 5,000 and 6",
]
FULL_ONLY = {"p_m0.1", "p_m1", "p_lam0.3", "p_uniform_mm", "p_random_mm", "p_uncertainty_mm", "l_hot50",
             "l_hot200", "l_cold5", "l_cold20", "l_listmle", "l_stlistnet", "l_ranknet", "l_ndcg_loss2pp"}
FULL_ONLY_SETTINGS = {"labels_top2", "teacher_many"}
# RADI-P margin modes at the same *mean* margin as OT's (--full only): W's rows sum to 1 there, so
# OT's mean margin is m / (K - 1) = 10 / 99 ~ 0.1; uniform W = 1 -> m = 0.1; random W ~ U[0, 1]
# (mean 0.5) -> m = 0.2; uncertainty W = 1 / (U + 1e-6) has mean ~20 on that teacher's top 100 -> m = 0.005.
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


# the order of training: RADI-P/RADI-L themselves, the combined objectives and the label/teacher
# settings for every seed first (the main questions: does RADI help over KD, and when?), then
# Table 3's ablations among RADI variants, then the finer grids (--full). A run cut short leaves the
# later phases with fewer seeds, and the report says so.
PHASES = (("reference", "combined", "labels", "teacher"), ("margin_modes", "sampling"),
          ("margin_grid", "hot_cold", "list_loss"))
FIRST_PHASE_CELLS = {"radi_p", "radi_l"}  # in the margin-mode / sampling tables, but trained first


def phase_of(c) -> int:
    return 0 if c.id in FIRST_PHASE_CELLS else next(i for i, groups in enumerate(PHASES) if c.group in groups)


def build_grid(tiny: bool = False, full: bool = False):
    """The settings and cells: by default the trimmed grid of the committed results; ``full``: the
    whole planned grid (TRIMMED says what it adds); ``tiny``: the same structure, fewer cells,
    a toy benchmark."""
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
    elif not full:  # the trimmed grid of the committed results
        cells = [c for c in cells if c.id not in FULL_ONLY and c.setting not in FULL_ONLY_SETTINGS
                 and not (c.setting != "main" and c.spec == "baseline")]
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
# t_{0.975, df} for df = 1..30 (the 95% two-sided quantile), for machines without scipy
T975 = [12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
        2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
        2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272]


def t_quantile(level: float, df: int) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    try:
        from scipy import stats
    except ImportError:
        if level != 0.95 or not 1 <= df <= len(T975):
            raise RuntimeError("scipy is needed for this level / number of seeds") from None
        return T975[df - 1]
    return float(stats.t.ppf(0.5 + level / 2, df))


def t_interval(values: Sequence[float], level: float = LEVEL) -> dict:
    """Mean, sample sd and the ``level`` t-interval of the mean of ``values`` (n - 1 degrees of freedom)."""
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "t": float("nan"), "half_width": float("nan"),
                "ci": [float("nan"), float("nan")], "level": level}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = t_quantile(level, n - 1)
    half = t * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "t": t, "half_width": half, "ci": [mean - half, mean + half],
            "level": level}


def paired(per_seed_a: Dict[int, dict], per_seed_b: Dict[int, dict], split: str = "test") -> dict:
    """Per metric: the differences a - b on the seeds both have, and their t-interval."""
    seeds = sorted(set(per_seed_a) & set(per_seed_b))
    out = {"seeds": seeds}
    for m in METRICS:
        d = [per_seed_a[s][split][m] - per_seed_b[s][split][m] for s in seeds]
        out[m] = {"diffs": d, **t_interval(d)}
    return out


# ------------------------------------------------------------------------------------------- running
def environment() -> dict:
    import numpy
    import torch

    import radi_fast

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""
    try:
        import scipy
        scipy_version = scipy.__version__
    except ImportError:
        scipy_version = None
    return {"radi_fast": radi_fast.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "scipy": scipy_version, "python": platform.python_version(),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible",
            "commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "backend": radi_fast.backend_info()}


def git_last_change(path: str, commit: str = "HEAD") -> str:
    """The last commit up to ``commit`` that changed ``path`` (the trainer's code is the same across
    the commits the grid's invocations ran at when this predates them all)."""
    try:
        return subprocess.run(["git", "log", "-1", "--format=%H", commit or "HEAD", "--", path], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


def read_results(runs: str, setting: str, seed: int) -> dict:
    path = os.path.join(run_dir(runs, setting, seed), "results.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def unit_status(setting: Setting, seed: int, specs: Sequence[str], runs: str) -> List[str]:
    """The specs of a (setting, seed) unit still to train. Raises when its folder holds a run with
    other settings (a changed grid must go to another ``--runs`` folder)."""
    from radi_fast.config import parse_args, resolve_auto
    from radi_fast.rundir import config_diff

    res = read_results(runs, setting.name, seed)
    if not res:
        return list(specs)
    out = run_dir(runs, setting.name, seed)
    cfg = resolve_auto(parse_args(train_flags(setting, seed, specs, out)))
    diff = config_diff(res.get("config", {}), cfg)
    if diff:
        raise SystemExit(f"{out} holds a run with other settings ({'; '.join(diff)}): use another --runs folder")
    return [s for s in specs if "test" not in res.get("schemes", {}).get(s, {})]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def locked(runs: str):
    """An exclusive lock on ``<runs>/.lock`` (the workers share the ledger and ablations.json)."""
    import fcntl

    os.makedirs(runs, exist_ok=True)
    with open(os.path.join(runs, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_ledger(runs: str) -> dict:
    """``{"calls": [one per finished trainer call], "invocations": [one per run of this script]}``,
    kept in ``<runs>/ledger.json`` across interrupted and resumed runs."""
    path = os.path.join(runs, "ledger.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {"calls": [], "invocations": []}


def save_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def run_unit(job: dict) -> None:
    """Train the missing specs of one (setting, seed) unit in this process, ``CELLS_PER_CALL`` per
    trainer call; after each call the ledger and ``ablations.json`` are updated (under the lock)."""
    from radi_fast import train as T
    from radi_fast.config import parse_args

    specs, runs = job["specs"], job["runs"]
    for i in range(0, len(specs), job["per_call"]):
        chunk = specs[i:i + job["per_call"]]
        flags = train_flags(Setting(job["setting"], job["flags"], ""), job["seed"], chunk, run_dir(runs, job["setting"], job["seed"]))
        flags += ["--resume", "--no-progress", "--no-curves"]
        print(f"== {job['setting']} seed {job['seed']}: {len(chunk)} scheme(s): python -m radi_fast.train "
              + " ".join(shlex.quote(a) for a in flags), flush=True)
        w0, c0 = time.time(), time.process_time()
        T.run(parse_args(flags))
        entry = {"setting": job["setting"], "seed": job["seed"], "specs": chunk, "wall_seconds": time.time() - w0,
                 "cpu_seconds": time.process_time() - c0, "finished_at": now()}
        with locked(runs):
            ledger = load_ledger(runs)
            ledger["calls"].append(entry)
            inv = ledger["invocations"][-1]
            inv["last_progress"] = time.time()
            inv["wall_seconds"] = inv["last_progress"] - inv["t_start"]
            save_json(os.path.join(runs, "ledger.json"), ledger)
            if job.get("json_path"):
                write_json(job["grid"], job["seeds"], runs, job["json_path"], job["argv"], ledger)


def run_grid(settings, cells, seeds, runs, jobs, json_path=None, argv=(), grid=None) -> dict:
    """Train what is missing, phase by phase (PHASES: the main questions first, the ablations
    among RADI variants after), (setting, seed) unit by unit within a phase; returns the ledger."""
    phases = []
    for phase, groups in enumerate(PHASES):
        todo = []
        for name, setting in settings.items():
            specs = [c.spec for c in cells if c.setting == name and phase_of(c) == phase]
            for seed in seeds:
                missing = unit_status(setting, seed, specs, runs) if specs else []
                if missing:
                    todo.append({"setting": name, "flags": setting.flags, "seed": seed, "specs": missing,
                                 "runs": runs, "per_call": CELLS_PER_CALL, "json_path": json_path,
                                 "argv": list(argv), "grid": grid, "seeds": seeds})
                elif specs:
                    print(f"== {name} seed {seed}: all {len(specs)} scheme(s) of {groups} done, skipped", flush=True)
        # seed by seed, so that a run cut short leaves whole seeds of every setting rather than all
        # seeds of a few; within a seed the longest unit first (the workers end together)
        todo.sort(key=lambda j: (j["seed"], -len(j["specs"])))
        phases.append(todo)
    with locked(runs):
        ledger = load_ledger(runs)
        ledger["invocations"].append({"started": now(), "t_start": time.time(), "jobs": jobs, "units": sum(map(len, phases)),
                                      "wall_seconds": 0.0, "argv": list(argv),
                                      "commit": (grid or {}).get("environment", {}).get("commit")})
        save_json(os.path.join(runs, "ledger.json"), ledger)
    for todo in phases:
        if jobs > 1 and len(todo) > 1:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(jobs, len(todo)), maxtasksperchild=1) as pool:
                for _ in pool.imap_unordered(run_unit, todo):
                    pass
        else:
            for job in todo:
                run_unit(job)
    with locked(runs):
        ledger = load_ledger(runs)
        inv = ledger["invocations"][-1]
        inv["finished"] = now()
        inv["wall_seconds"] = time.time() - inv["t_start"]
        save_json(os.path.join(runs, "ledger.json"), ledger)
    return ledger


# ------------------------------------------------------------------------------------------- collecting
def collect(settings, cells, seeds, runs, meta) -> dict:
    """ablations.json: every per-seed number of every finished cell, the paired differences and
    intervals (over the seeds both sides have finished: ``n`` says how many) to its comparator, to
    vanilla KD and to the baseline (see :func:`baseline_id`)."""
    results = {(name, seed): read_results(runs, name, seed) for name in settings for seed in seeds}
    by_id = {c.id: c for c in cells}
    out_settings = {}
    for name, s in settings.items():
        stages = {}
        for stage in ("teacher", "individual"):
            per = {seed: results[(name, seed)]["stages"][stage] for seed in seeds
                   if stage in results[(name, seed)].get("stages", {})}
            stages[stage] = {"per_seed": [{"seed": seed, "val": p["val"], "test": p["test"],
                                           "epochs": len(p["history"]), "wall_seconds": p["seconds"]}
                                          for seed, p in per.items()],
                             "test_mean": {m: t_interval([p["test"][m] for p in per.values()])["mean"]
                                           for m in METRICS}}
        out_settings[name] = {"flags": s.flags, "title": s.title, "stages": stages}
    per_cell = {}
    for c in cells:
        per_cell[c.id] = {seed: results[(c.setting, seed)]["schemes"][c.spec] for seed in seeds
                          if "test" in results[(c.setting, seed)].get("schemes", {}).get(c.spec, {})}
    out_cells = {}
    for c in cells:
        per = per_cell[c.id]
        comp = comparator_id(c)
        entry = {**dataclasses.asdict(c), "comparator": comp, "kd": kd_id(c), "n_seeds": len(per),
                 "command": command(settings[c.setting], c, by_id[comp] if comp else None, seeds),
                 "per_seed": [{"seed": seed, "val": p["val"], "test": p["test"], "wall_seconds": p["seconds"]}
                              for seed, p in per.items()],
                 "test": {m: t_interval([p["test"][m] for p in per.values()]) for m in METRICS},
                 "val_score": t_interval([sum(p["val"][m] for m in METRICS) for p in per.values()])["mean"]}
        if comp:
            entry["vs_comparator"] = paired(per, per_cell[comp])
        if c.id != kd_id(c):
            entry["vs_kd"] = paired(per, per_cell[kd_id(c)])
        base = baseline_id(c, by_id, out_settings)
        if base and base != c.id:
            entry["baseline"] = base
            entry["vs_baseline"] = paired(per, per_cell[base])
        out_cells[c.id] = entry
    selection = {}
    for fam in sorted({c.family for c in cells if c.family}):
        cands = [c.id for c in cells if c.family == fam]
        scores = {cid: out_cells[cid]["val_score"] for cid in cands}
        complete = all(out_cells[cid]["n_seeds"] == len(seeds) for cid in cands)
        chosen = max(cands, key=lambda cid: scores[cid] if math.isfinite(scores[cid]) else -math.inf)
        selection[fam] = {"candidates": cands, "val_score": scores, "chosen": chosen, "complete": complete}
        for cid in cands:
            out_cells[cid]["chosen"] = cid == chosen
    done = sum(c["n_seeds"] for c in out_cells.values())
    return {"meta": {**meta, "finished_cell_seeds": done, "planned_cell_seeds": len(cells) * len(seeds),
                     "complete": done == len(cells) * len(seeds)},
            "statistics": (
                f"paired differences over seeds (cell minus comparator on the same seed: same teacher, initialisation, "
                f"data order); mean and {int(LEVEL * 100)}% confidence interval from Student's t with n - 1 degrees of "
                "freedom, mean +- t * sd / sqrt(n); an interval containing 0 is a tie"),
            "selection_rule": ("combined objectives: per family, the candidate with the highest validation score "
                               "(Acc@1 + Hit@5 + nDCG@5 of the trained student, mean over seeds); only its test "
                               "numbers are reported in docs/results.md"),
            "selection": selection, "settings": out_settings, "cells": out_cells}


def baseline_id(c: Cell, by_id: Dict[str, Cell], settings_out: dict) -> Optional[str]:
    """The baseline (continued training) to compare ``c`` with: its setting's own, or else main's
    when the setting's student initialisation is the very same model as main's on every seed (the
    teacher settings: ``--individual_epochs`` keeps it; continued training never sees the teacher)."""
    own = "baseline" if c.setting == "main" else f"{c.setting}/baseline"
    if own in by_id:
        return own
    if "baseline" not in by_id or c.setting not in settings_out or "main" not in settings_out:
        return None
    mine = settings_out[c.setting]["stages"]["individual"]["per_seed"]
    main = settings_out["main"]["stages"]["individual"]["per_seed"]
    same = bool(mine) and len(mine) == len(main) and all(a["seed"] == b["seed"] and a["test"] == b["test"]
                                                         for a, b in zip(mine, main))
    return "baseline" if same else None


def write_json(grid: dict, seeds, runs: str, json_path: str, argv, ledger: dict) -> dict:
    """Collect the finished cells of ``grid`` (``{"tiny", "cells"}``) and write ``json_path``."""
    settings, cells = build_grid(grid["tiny"], grid.get("full", False))
    cells = [c for c in cells if c.id in grid["cells"]]
    settings = {k: v for k, v in settings.items() if any(c.setting == k for c in cells)}
    meta = {"argv": list(argv), "seeds": list(seeds), "base_flags": TINY if grid["tiny"] else BASE,
            "main_teacher_epochs": 2 if grid["tiny"] else MAIN_TEACHER_EPOCHS, "trimmed": TRIMMED,
            "cells_per_call": CELLS_PER_CALL, "written": now(),
            # the code that trained: the environment when the run started (later commits change nothing trained)
            "environment": grid.get("environment") or environment(),
            "wall_seconds": sum(i.get("wall_seconds") or 0.0 for i in ledger["invocations"]),
            "cpu_seconds_trainer_calls": sum(e["cpu_seconds"] for e in ledger["calls"]),
            "jobs": max((i["jobs"] for i in ledger["invocations"]), default=1), "ledger": ledger,
            "training_commits": [i.get("commit") for i in ledger["invocations"]],
            "radi_fast_last_change": git_last_change("radi_fast", (grid.get("environment") or {}).get("commit")),
            "timing_note": ("wall_seconds: over every invocation of this script on these --runs folders, from its "
                            "start to its last finished trainer call (an invocation killed midway counts up to "
                            "its last finished call); cpu_seconds_trainer_calls: the sum of the trainer calls' "
                            "own process CPU time (data, training, evaluation, checkpoints)")}
    rep = collect(settings, cells, seeds, runs, meta)
    save_json(json_path, rep)
    return rep


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
    p.add_argument("--collect", action="store_true",
                   help="only gather the finished cells of the chosen grid into <out>/ablations.json (no training)")
    p.add_argument("--report", action="store_true", help="only rewrite the report and plots from <out>/ablations.json")
    p.add_argument("--no-report", action="store_true", help="write ablations.json but not the Markdown and plots")
    p.add_argument("--full", action="store_true", help="the whole planned grid, with the cells TRIMMED lists "
                   "(about 2.5x the CPU time of the committed grid)")
    p.add_argument("--tiny", action="store_true", help="a toy benchmark and fewer cells (seconds; for the test)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    json_path = os.path.join(args.out, "ablations.json")
    if args.report:
        import ablations_report  # noqa: E402  (bench/ is on sys.path when this file runs as a script)

        with open(json_path) as f:
            rep = json.load(f)
        ablations_report.write_report(rep, args.docs, args.img)
        return 0
    settings, cells = build_grid(args.tiny, args.full)
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
    if len(seeds) < 5 and not args.tiny:
        print(f"warning: {len(seeds)} seed(s); the committed results need at least 5", file=sys.stderr)
    grid = {"tiny": args.tiny, "full": args.full, "cells": [c.id for c in cells], "environment": environment()}
    if args.collect:
        if os.path.isfile(json_path):  # keep the environment the training ran under, not today's checkout
            with open(json_path) as f:
                grid["environment"] = json.load(f)["meta"]["environment"]
        rep = write_json(grid, seeds, args.runs, json_path, argv, load_ledger(args.runs))
    else:
        run_grid(settings, cells, seeds, args.runs, args.jobs, json_path, argv, grid)
        rep = write_json(grid, seeds, args.runs, json_path, argv, load_ledger(args.runs))
    meta = rep["meta"]
    print(f"wrote {json_path}: {meta['finished_cell_seeds']}/{meta['planned_cell_seeds']} (cell, seed) results, "
          f"{meta['wall_seconds'] / 60:.1f} min wall, {meta['cpu_seconds_trainer_calls'] / 60:.1f} CPU min")
    if not args.no_report:
        import ablations_report  # noqa: E402

        ablations_report.write_report(rep, args.docs, args.img)
    for cid, c in rep["cells"].items():
        for key in ("vs_comparator", "vs_kd"):
            if key in c and not (key == "vs_kd" and c.get("comparator") == c["kd"]):
                print(f"{cid:22s} {key:14s} " + "  ".join(
                    f"{METRIC_NAMES[m]} {c[key][m]['mean']:+.2f} ± {c[key][m]['half_width']:.2f}" for m in METRICS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
