"""The benchmark harness: measurement, machine facts and the results file (no pytest hooks).

Every benchmark goes through :func:`run_benchmark` (the ``bench_run`` fixture of ``conftest.py``):

* sizes scale with the device (``RADI_BENCH_SIZES``: ``full`` on CUDA, ``cpu`` on CPU, ``tiny``
  for a smoke run); a provider that would not fit the memory budget is skipped with its estimate;
* timing: pytest-benchmark in pedantic mode, one call per round; compiled providers (Triton,
  ``torch.compile``, KeOps) are called once first so compilation and autotuning are excluded;
  the memory-measuring call(s) (two when a call takes under 1 s, or on CUDA under 30 s, where
  a slow first call is Triton compiling: the second is measured) are the warm-up
  (``RADI_BENCH_WARMUP`` adds rounds); ``rounds`` is sized from the faster of them
  (``RADI_BENCH_SECONDS`` per benchmark, at least ``RADI_BENCH_MIN_ROUNDS`` = 3, or 5 for calls
  under 1 s, at most ``RADI_BENCH_MAX_ROUNDS`` = 15); the median wall-clock time is reported,
  and on CPU also the median process CPU time of the same rounds (``median_cpu_s``: what other
  processes on a shared machine do not inflate). On CUDA every timed function ends with
  ``torch.cuda.synchronize()``;
* peak memory of one call, per provider: on CUDA ``torch.cuda.max_memory_allocated`` minus the
  memory allocated before the call; on CPU the process's peak resident set (``VmHWM`` in
  ``/proc/self/status``, reset through ``/proc/self/clear_refs``) minus its resident set just
  before the call, after ``gc.collect()`` and ``malloc_trim(0)`` returned freed memory to the
  system (so the peak counts every page the call touches: torch, NumPy, KeOps, compiled code);
* CPU threads: ``RADI_BENCH_THREADS`` (default 1, like the trainer: this machine is shared and
  OpenMP barriers stall badly under oversubscription).

:func:`write_results` writes the session's results (every benchmark, the sampler's included) to
``bench/results/<device>.json`` (``bench/results/partial/<device>.json`` for a partial run;
``RADI_BENCH_JSON`` overrides) with the device name, the versions, the date and the load
average; ``python bench/report.py`` turns them into tables and plots.
"""
from __future__ import annotations

import ctypes
import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional

import pytest
import torch

import providers as P
from providers import compiled_batch_sizes, sizes_mode

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")


# ----------------------------------------------------------------------------- settings
def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


SECONDS_PER_BENCH = _env_float("RADI_BENCH_SECONDS", 1.0)
MIN_ROUNDS = int(_env_float("RADI_BENCH_MIN_ROUNDS", 3))
MAX_ROUNDS = int(_env_float("RADI_BENCH_MAX_ROUNDS", 15))
FAST_MIN_ROUNDS = 5  # calls under SLOW_CALL_S get at least this many rounds
WARMUP_ROUNDS = int(_env_float("RADI_BENCH_WARMUP", 0))  # beyond the memory-measuring call(s)
SLOW_CALL_S = 1.0  # calls faster than this are measured (memory) on a second, warm call
CUDA_RETRY_S = 30.0  # on CUDA also calls up to this slow: a first call there pays JIT compiles

# the session: skipped providers (with their reasons) and when it started
SKIPS: List[Dict[str, Any]] = []
SESSION: Dict[str, Any] = {}


def start_session() -> None:
    """Set the CPU threads (``RADI_BENCH_THREADS``) and note the start time and load."""
    threads = os.environ.get("RADI_BENCH_THREADS", "1" if P.device().type == "cpu" else "")
    if threads:
        torch.set_num_threads(int(threads))
    SESSION["start"] = time.time()
    SESSION["load_start"] = load_average()


# ----------------------------------------------------------------------------- machine info
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def device_slug(dev: torch.device) -> str:
    if dev.type == "cuda":
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(dev).lower()).strip("-")
    return "cpu"


def _version(mod: str) -> Optional[str]:
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "installed")
    except Exception:
        return None


def machine_info() -> Dict[str, Any]:
    dev = P.device()
    info = {
        "device": device_name(dev),
        "device_type": dev.type,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "pot": _version("ot"),
        "geomloss": _version("geomloss"),
        "pykeops": _version("pykeops"),
        "geomloss_backend": "online (KeOps) and tensorized" if P.keops_status() is None
        else f"tensorized only ({P.keops_status()})",
        "sizes": sizes_mode(),
        "memory_method": ("torch.cuda.max_memory_allocated - memory_allocated before the call" if dev.type == "cuda"
                          else "VmHWM (peak RSS, reset via /proc/self/clear_refs) - VmRSS before the call, "
                               "after gc.collect() + malloc_trim(0)"),
    }
    if dev.type == "cuda":
        info["cuda"] = torch.version.cuda
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except Exception:
        info["git_commit"] = None
    try:
        from radi_fast import backend_info

        bi = backend_info()
        info["radi_fast_backends"] = {k: bi.get(k) for k in ("pairwise_cpu", "pairwise_cuda", "sampler")}
    except Exception:
        pass
    return info


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


# ----------------------------------------------------------------------------- peak memory
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC


def _status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_call(fn: Callable[[], Any], dev: torch.device):
    """Run ``fn`` once: (result, peak extra bytes or None, seconds)."""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        return out, torch.cuda.max_memory_allocated(dev) - base, dt
    libc = _libc()
    if libc:
        libc.malloc_trim(0)
    base = _status_kib("VmRSS")
    ok = _reset_hwm()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    if not ok or base is None or peak is None:
        return out, None, dt
    return out, max(0, peak - base) * 1024, dt


# ----------------------------------------------------------------------------- the runner
def run_benchmark(benchmark, case: str, provider: P.Provider, inp: P.Inputs, group: str,
                  extra: Optional[dict] = None, key: Optional[tuple] = None):
    """Skip (with the reason), compile, measure memory, time, and record one provider on ``inp``."""
    dev = inp.dev
    info = {"case": case, "provider": provider.name, "B": inp.B, "K": inp.K, "T": inp.T, "device": dev.type,
            "settings": {k: v for k, v in inp.settings.items() if isinstance(v, (int, float, str, bool))}}
    info.update(extra or {})
    benchmark.group = group
    benchmark.extra_info.update(info)
    reason = provider.skip(inp)
    if provider.compiled and provider.name.startswith("dense_compiled") and inp.B not in compiled_batch_sizes():
        reason = reason or (f"torch.compile runs at B in {sorted(compiled_batch_sizes())} only here (each new "
                            "specialisation costs ~30-60 s of compile time on this CPU; RADI_BENCH_COMPILE_ALL=1 "
                            "runs every B)")
    if reason:
        SKIPS.append({**info, "skipped": reason})
        pytest.skip(reason)
    fn = provider.build(inp)
    compile_s = None
    if provider.compiled:
        t0 = time.perf_counter()
        fn()
        compile_s = time.perf_counter() - t0
    out, peak, first_s = measure_call(fn, dev)
    # measure memory and size the rounds on a warm second call (lazy initialisation excluded): on
    # CUDA a slow first call is mostly Triton's JIT compiling kernels (a training step with RADI-P:
    # seconds), which left 3 rounds, the first of them still compiling variants
    if first_s < SLOW_CALL_S or (dev.type == "cuda" and first_s < CUDA_RETRY_S):
        del out
        out, peak, second_s = measure_call(fn, dev)
        first_s = min(first_s, second_s)
    key = key or (case, inp.B, inp.K, tuple(sorted(info["settings"].items())))
    if provider.name == "radi_fast":
        P.REFERENCE_OUTPUTS[key] = out
    agree = P.agreement(case, provider.name, out, P.REFERENCE_OUTPUTS[key]) \
        if key in P.REFERENCE_OUTPUTS and provider.name != "radi_fast" else None
    del out
    min_rounds = MIN_ROUNDS if first_s > SLOW_CALL_S else max(MIN_ROUNDS, FAST_MIN_ROUNDS)
    rounds = int(min(MAX_ROUNDS, max(min_rounds, math.ceil(SECONDS_PER_BENCH / max(first_s, 1e-6)))))
    warmup = WARMUP_ROUNDS
    cpu_times = []

    def timed():  # also the process CPU time of each call (robust to other processes on a shared CPU)
        c0 = time.process_time()
        result = fn()
        cpu_times.append(time.process_time() - c0)
        return result

    benchmark.extra_info.update(peak_mem_bytes=peak, first_call_s=first_s, compile_s=compile_s,
                                max_rel_diff_vs_radi_fast=agree, load_avg=load_average())
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)
    if dev.type == "cpu" and len(cpu_times) > warmup:
        benchmark.extra_info["median_cpu_s"] = statistics.median(cpu_times[warmup:])


# ----------------------------------------------------------------------------- results
def record(bench) -> Dict[str, Any]:
    """One pytest-benchmark result as a results-file record."""
    s = bench.stats
    extra = dict(bench.extra_info)
    rec = {
        "name": bench.name, "group": bench.group, "params": {k: v for k, v in (bench.params or {}).items()
                                                           if isinstance(v, (int, float, str, bool))},
        "median_s": s.median, "min_s": s.min, "mean_s": s.mean, "stddev_s": s.stddev, "iqr_s": s.iqr,
        "rounds": s.rounds, **extra,
    }
    if "case" not in rec:  # the sampler benchmark (test_bench_sampler.py) does not use run_benchmark
        p = rec["params"]
        rec.update(case="sampler", provider=p.get("provider"), B=p.get("b"), K=p.get("n"),
                   device=p.get("device", "cpu"), T=None)
    return rec


def write_results(records: List[Dict[str, Any]], exitstatus: int, partial: bool) -> str:
    """Write the session's results file; returns its path.

    A partial run (part of the suite) goes to ``bench/results/partial/`` so it never replaces a
    whole session's file (whose ratios all come from one run).
    """
    dev = P.device()
    doc = {
        "machine": machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": SESSION.get("load_start"),
        "load_average_end": load_average(),
        "wall_s": time.time() - SESSION.get("start", time.time()),
        "exitstatus": int(exitstatus),
        "settings": {"sizes": sizes_mode(), "seconds_per_bench": SECONDS_PER_BENCH, "min_rounds": MIN_ROUNDS,
                     "max_rounds": MAX_ROUNDS, "warmup_rounds": WARMUP_ROUNDS, "sinkhorn_iters": P.SINKHORN_ITERS,
                     "compiled_batch_sizes": sorted(compiled_batch_sizes())},
        "results": records,
        "skipped": SKIPS,
    }
    doc["partial_run"] = partial
    default = os.path.join(RESULTS_DIR, "partial" if partial else "", f"{device_slug(dev)}.json")
    path = os.environ.get("RADI_BENCH_JSON") or default
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)
    return path
