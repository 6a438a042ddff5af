"""pytest hooks of the benchmark suite: ``pytest bench/ --benchmark-only`` (or ``--benchmark``,
its alias: the command users type).

Benchmarks live in ``bench/test_bench_*.py`` (RADI-P, Sinkhorn, uncertainty, RADI-L, sampler,
training step). A plain ``pytest`` run that reaches this folder collects them but skips them, so
the test suite never spends minutes timing things. Measurement, machine facts and the results
file are in ``harness.py``; this file wires them into the session: the ``bench_run`` fixture,
the thread setting at start, the results file at the end.
"""
from __future__ import annotations

import os
import sys

import pytest

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402


@pytest.fixture
def bench_run(benchmark):
    """``bench_run(case, provider, inputs, group, extra=None, key=None)``: :func:`harness.run_benchmark`."""
    def run(case, provider, inp, group, extra=None, key=None):
        return harness.run_benchmark(benchmark, case, provider, inp, group, extra, key)

    return run


# ----------------------------------------------------------------------------- options
def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run the benchmarks: an alias of pytest-benchmark's --benchmark-only")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # before pytest-benchmark's own pytest_configure reads benchmark_only into its session
    if config.getoption("benchmark", default=False):
        config.option.benchmark_only = True
    harness.start_session()


# ----------------------------------------------------------------------------- collection
def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="benchmark: run with pytest bench/ --benchmark-only")
    for item in items:
        if item.path.name.startswith("test_bench_"):
            item.add_marker(skip)


_DESELECTED = [0]


def pytest_deselected(items):
    _DESELECTED[0] += len(items)


# ----------------------------------------------------------------------------- session
def _partial_run(session) -> bool:
    """A run of part of the suite (-k, -m, single files or tests, deselection)."""
    opt = session.config.option
    if getattr(opt, "keyword", "") or getattr(opt, "markexpr", "") or _DESELECTED[0]:
        return True
    for arg in session.config.args:
        path = os.path.abspath(arg.split("::")[0])
        if not os.path.isdir(path) or not BENCH_DIR.startswith(path):
            return True
    return False


def pytest_sessionfinish(session, exitstatus):
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None or not session.config.getoption("benchmark_only", default=False):
        return
    records = [harness.record(b) for b in bs.benchmarks if b and getattr(b.stats, "rounds", 0)]
    if not records and not harness.SKIPS:
        return
    path = harness.write_results(records, exitstatus, _partial_run(session))
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(f"radi_fast benchmarks: {len(records)} results, {len(harness.SKIPS)} skipped -> {path}")
