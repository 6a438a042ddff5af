"""Benchmarks live in bench/bench_*.py and run only under ``pytest bench/ --benchmark-only``.

A plain ``pytest`` run that reaches this folder collects them but skips them, so the test
suite never spends minutes timing things.
"""
import pytest


def pytest_collect_file(file_path, parent):
    # files named on the command line are collected by pytest itself
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="benchmark: run with pytest bench/ --benchmark-only")
    for item in items:
        if item.path.name.startswith("bench_"):
            item.add_marker(skip)
