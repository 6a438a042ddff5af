"""bench/ablations.py: the statistics against known values, and a seconds-long grid run
end to end (resumable, every cell reproducible from ``python -m radi_fast.train`` flags, report)."""
import json
import math
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import ablations as A  # noqa: E402


# ------------------------------------------------------------------------------------------ statistics
def test_t_quantiles_known_values():
    # Student's t, two-sided 95%: the textbook table
    for df, t in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)]:
        assert A.t_quantile(0.95, df) == pytest.approx(t, abs=1e-3)
        assert A.T975[df - 1] == pytest.approx(t, abs=1e-3)


def test_t_quantile_table_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, len(A.T975) + 1):
        assert A.T975[df - 1] == pytest.approx(stats.t.ppf(0.975, df), abs=1e-5)


def test_t_interval_known_values():
    r = A.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sample sd sqrt(2.5), half-width t_{0.975,4} * sd / sqrt(5) = 2.776445 * 0.707107
    assert r["n"] == 5 and r["mean"] == pytest.approx(3.0)
    assert r["sd"] == pytest.approx(math.sqrt(2.5))
    assert r["half_width"] == pytest.approx(1.963243, abs=1e-5)
    assert r["ci"] == pytest.approx([3.0 - 1.963243, 3.0 + 1.963243], abs=1e-5)
    # constant differences: a zero-width interval
    assert A.t_interval([0.5] * 5)["ci"] == pytest.approx([0.5, 0.5])
    one = A.t_interval([1.0])
    assert one["n"] == 1 and math.isnan(one["half_width"])


def test_verdict_is_the_interval_rule():
    assert A.verdict(A.t_interval([1.0, 1.2, 0.9, 1.1, 1.0])) == "better"
    assert A.verdict(A.t_interval([-1.0, -1.2, -0.9, -1.1, -1.0])) == "worse"
    assert A.verdict(A.t_interval([1.0, -1.0, 0.5, -0.4, 0.1])) == "tie"
    assert A.verdict(A.t_interval([1.0])) == "n/a"


def test_paired_differences_use_the_seeds_both_have():
    a = {s: {"test": {"acc1": 10.0 + s, "hit5": 50.0, "ndcg5": 20.0}} for s in range(5)}
    b = {s: {"test": {"acc1": 9.0, "hit5": 50.0 + s, "ndcg5": 20.0}} for s in (0, 1, 2, 3)}
    p = A.paired(a, b)
    assert p["seeds"] == [0, 1, 2, 3]
    assert p["acc1"]["diffs"] == [1.0, 2.0, 3.0, 4.0] and p["acc1"]["mean"] == pytest.approx(2.5)
    assert p["hit5"]["diffs"] == [0.0, -1.0, -2.0, -3.0]


def test_grid_has_every_question_and_valid_specs():
    from radi_fast.schemes import build_scheme

    settings, cells = A.build_grid(full=True)
    groups = {c.group for c in cells}
    assert groups == set(A.GROUPS) and {g for p in A.PHASES for g in p} == groups
    trimmed_settings, trimmed = A.build_grid()
    assert {c.id for c in trimmed} < {c.id for c in cells} and set(trimmed_settings) < set(settings)
    assert not {c.id for c in trimmed} & A.FULL_ONLY and {"labels", "teacher", "combined"} <= {c.group for c in trimmed}
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids))
    for c in cells:
        build_scheme(c.spec)  # every spec is a valid --schemes entry
        assert A.comparator_id(c) in (None, *ids) and A.kd_id(c) in ids
    assert {c.family for c in cells if c.family} == {"kd_radi_p", "kd_radi_l"}


# ------------------------------------------------------------------------------------------ a tiny grid
def test_tiny_grid_end_to_end(tmp_path):
    from radi_fast import train as T
    from radi_fast.config import parse_args

    out = str(tmp_path)
    argv = ["--tiny", "--seeds", "0,1", "--cells", "p_uniform,kp_half,teacher_few/radi_l", "--runs",
            os.path.join(out, "runs"), "--out", out, "--docs", os.path.join(out, "results.md"), "--img",
            os.path.join(out, "img")]
    assert A.main(argv) == 0
    with open(os.path.join(out, "ablations.json")) as f:
        rep = json.load(f)
    cells = rep["cells"]
    # the chosen cells, their comparators, their settings' KD, and the other candidate of a family
    assert set(cells) == {"p_uniform", "radi_p", "kd", "kp_half", "teacher_few/radi_l", "teacher_few/kd"}
    assert rep["meta"]["complete"] and rep["meta"]["environment"]["commit"] is not None
    for c in cells.values():
        assert c["n_seeds"] == 2 and [p["seed"] for p in c["per_seed"]] == [0, 1]
    d = cells["p_uniform"]["vs_comparator"]["acc1"]
    ps = {p["seed"]: p["test"]["acc1"] for p in cells["p_uniform"]["per_seed"]}
    rp = {p["seed"]: p["test"]["acc1"] for p in cells["radi_p"]["per_seed"]}
    assert d["diffs"] == pytest.approx([ps[0] - rp[0], ps[1] - rp[1]])
    assert rep["selection"]["kd_radi_p"]["chosen"] == "kp_half"  # the only candidate run here
    text = open(os.path.join(out, "results.md")).read()
    assert "95%" in text and "Wall time of the run" in text and "verdict:start" in text
    assert os.path.isfile(os.path.join(out, "img", "ablations_summary.png"))
    assert os.path.isfile(os.path.join(out, "img", "gain_vs_teacher.png"))

    # resumable: a second run trains nothing
    calls = len(json.load(open(os.path.join(out, "runs", "ledger.json")))["calls"])
    assert A.main(argv + ["--no-report"]) == 0
    assert len(json.load(open(os.path.join(out, "runs", "ledger.json")))["calls"]) == calls

    # one cell reproduced from its python -m radi_fast.train flags in a fresh folder: the same numbers
    settings, grid_cells = A.build_grid(tiny=True)
    cell = next(c for c in grid_cells if c.id == "p_uniform")
    flags = A.train_flags(settings["main"], 1, ["radi_p", cell.spec], os.path.join(out, "repro"))
    res = T.run(parse_args(flags + ["--no-progress", "--no-curves"]))
    assert res["schemes"][cell.spec]["test"] == pytest.approx(cells["p_uniform"]["per_seed"][1]["test"])
