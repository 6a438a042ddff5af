"""Benchmark of the partial-list sampler (RADI-L, sec. 3.3): the compiled op against PyTorch.

Run:  pytest bench/ --benchmark-only            (or: pytest bench/test_bench_sampler.py --benchmark-only)

Providers, on identical teacher scores [B, N] (fp32), hot = 100, cold = 10, Zipf alpha = 1
(the paper's defaults), every one producing the same [B, hot + cold] sub-list contract:

* ``op``: ``torch.ops.radi_fast.partial_list`` (the compiled op; its own checks included);
* ``op_validated``: ``radi_fast.ops.sampler.partial_list_op`` (+ the Python argument checks);
* ``torch_fallback``: ``radi_fast.sampling.partial_list_torch`` (the pure-PyTorch sampler);
* ``multinomial``: what a user would write: a stable descending ``torch.sort`` for the ranking
  (hot list + rank -> answer), ``torch.multinomial(probs, cold, replacement=False)`` with the
  same rank probabilities (precomputed once, outside the timed function), and the gathers;
* ``multinomial_draws_only``: the ``torch.multinomial`` call alone (a lower bound for the
  baseline: it does not produce the sub-list).

Timing: pytest-benchmark pedantic mode, warm-up rounds, then ``RADI_BENCH_ROUNDS`` rounds
(default 15) of one call each; CUDA calls are synchronised inside the timed function. Report
the median. Shapes B in {32, 256}, N in {2349, 3589} (the answer-set sizes of the paper's
datasets); CPU always, CUDA when available.
"""
from __future__ import annotations

import os

import pytest
import torch

from radi_fast.ops import sampler

HOT, COLD, SCHEME, ALPHA = 100, 10, "zipf", 1.0
SHAPES = [(32, 2349), (32, 3589), (256, 2349), (256, 3589)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PROVIDERS = ["op", "op_validated", "torch_fallback", "multinomial", "multinomial_draws_only"]
ROUNDS = int(os.environ.get("RADI_BENCH_ROUNDS", "15"))
WARMUP = 3


def _scores(b: int, n: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(b * 100003 + n)
    return torch.randn(b, n, generator=g).to(device)


def _thunk(provider: str, scores: torch.Tensor):
    b, n = scores.shape
    device = scores.device
    if provider.startswith("op"):
        if not sampler.compiled_available():
            pytest.skip(f"radi_fast._C not built ({sampler.extension_status()['error']})")
        if device.type == "cuda" and not sampler.extension_status()["cuda_kernels"]:
            pytest.skip("radi_fast._C built without CUDA kernels")
        if provider == "op":
            return lambda: torch.ops.radi_fast.partial_list(scores, HOT, COLD, SCHEME, ALPHA, 1234, 0)
        return lambda: sampler.partial_list_op(scores, HOT, COLD, SCHEME, ALPHA, 1234, 0)
    from radi_fast.sampling import partial_list_torch, rank_log_probs

    gen = torch.Generator(device=device).manual_seed(0)
    if provider == "torch_fallback":
        return lambda: partial_list_torch(scores, HOT, COLD, SCHEME, ALPHA, generator=gen)
    probs = rank_log_probs(n - HOT, SCHEME, ALPHA).exp().to(device=device, dtype=torch.float32)
    probs = probs.expand(b, n - HOT)
    if provider == "multinomial_draws_only":
        return lambda: torch.multinomial(probs, COLD, replacement=False, generator=gen)

    def multinomial():
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        drawn = torch.multinomial(probs, COLD, replacement=False, generator=gen)
        return torch.cat([order[:, :HOT], order[:, HOT:].gather(1, drawn)], dim=1)

    return multinomial


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("b, n", SHAPES, ids=[f"B{b}-N{n}" for b, n in SHAPES])
@pytest.mark.parametrize("device", DEVICES)
def test_partial_list(benchmark, device, b, n, provider):
    scores = _scores(b, n, device)
    fn = _thunk(provider, scores)
    if device == "cuda":
        inner = fn

        def fn():
            out = inner()
            torch.cuda.synchronize()
            return out

    out = fn()
    assert out.shape == ((b, COLD) if provider == "multinomial_draws_only" else (b, HOT + COLD))
    benchmark.group = f"partial_list {device} B={b} N={n}"
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        threads=torch.get_num_threads(), hot=HOT, cold=COLD, scheme=SCHEME, alpha=ALPHA,
        torch=torch.__version__,
    )
    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
