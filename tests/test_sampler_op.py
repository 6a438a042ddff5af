"""The compiled partial-list sampler ``torch.ops.radi_fast.partial_list`` (csrc/).

Exactness: Philox known-answer vectors, the uniforms and keys against an independent Python
implementation, and the cold list equal to the exact top-k of the keys (this checks the CPU
kernel's pruning). Statistics (fixed seeds, each with a negative control that must fail):
exact Plackett-Luce order probabilities for N = 4, 5; the first cold draw's rank law for
N = 2349; agreement in distribution with the pure-PyTorch sampler. Plus determinism, thread
count independence, opcheck, torch.compile tracing, bad arguments, CUDA == CPU bit for bit.
Everything that needs the extension skips (with the reason) when it is not built.
"""
from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from radi_fast.ops import sampler

stats = pytest.importorskip("scipy.stats")

needs_ext = pytest.mark.skipif(
    not sampler.compiled_available(),
    reason=f"radi_fast._C is not built ({sampler.extension_status()['error']})",
)
needs_cuda = pytest.mark.skipif(
    not (sampler.compiled_available() and sampler.extension_status()["cuda_kernels"]
         and torch.cuda.is_available()),
    reason="needs a CUDA device and an extension built with CUDA kernels",
)
P_MIN = 1e-3  # accept the right law when p > P_MIN ...
P_CONTROL = 1e-6  # ... and require the wrong law to be rejected with p < P_CONTROL


def op(*args, **kwargs):
    return sampler.partial_list_op(*args, **kwargs)


def stable_ranking(scores: torch.Tensor, lengths=None) -> torch.Tensor:
    """Reference ranking: score descending, index ascending, -0.0 == +0.0, padding last."""
    s = scores.double() + 0.0
    if lengths is not None:
        pad = torch.arange(s.shape[1])[None, :] >= lengths[:, None]
        s = s.masked_fill(pad, float("-inf"))
    return torch.sort(s, dim=1, descending=True, stable=True).indices


# --------------------------------------------------------------------------------------------
# an independent Philox4x32-10 and key computation in Python
# --------------------------------------------------------------------------------------------
M32 = 0xFFFFFFFF


def philox4x32_10(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def py_uniform(seed, offset, row, pos):
    s, o = seed % 2**64, offset % 2**64
    x = philox4x32_10((pos >> 1, row, o & M32, o >> 32), (s & M32, s >> 32))
    lo, hi = (x[2], x[3]) if pos & 1 else (x[0], x[1])
    bits = (hi << 20) | (lo >> 12)
    return (bits + 0.5) * 2.0**-52


def py_log_weight(scheme, alpha, r):
    return {"exp": -alpha * r, "zipf": -alpha * math.log(r), "random": 0.0}[scheme]


KAT = [  # Random123 kat_vectors for philox4x32_10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32,) * 4, (M32,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr, key, expected", KAT)
def test_python_philox_known_answers(ctr, key, expected):
    assert philox4x32_10(ctr, key) == expected


@needs_ext
@pytest.mark.parametrize("ctr, key, expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    assert tuple(torch.ops.radi_fast._philox4x32_10(*ctr, *key)) == expected


@needs_ext
@pytest.mark.parametrize("seed, offset, row", [(0, 0, 0), (12345, 7, 3), (-1, 2**40 + 5, 99), (2**63 - 1, -3, 0)])
def test_uniforms_match_python(seed, offset, row):
    got = torch.ops.radi_fast._uniforms(64, seed, offset, row).tolist()
    assert got == [py_uniform(seed, offset, row, r) for r in range(1, 65)]
    assert all(0.0 < u < 1.0 for u in got)


@needs_ext
@pytest.mark.parametrize("scheme, alpha", [("exp", 0.3), ("zipf", 1.0), ("zipf", 0.0), ("random", 1.0)])
def test_cold_keys_match_python(scheme, alpha):
    m, seed, offset, row = 300, 99, 4, 2
    got = torch.ops.radi_fast._cold_keys(m, scheme, alpha, seed, offset, row).numpy()
    want = np.array([py_log_weight(scheme, alpha, r) - math.log(-math.log(py_uniform(seed, offset, row, r)))
                     for r in range(1, m + 1)])
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-13)


@needs_ext
def test_portable_log_accuracy():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.exp(rng.uniform(-745, 709, 20000)), rng.uniform(0, 1, 20000),
                        rng.uniform(0.5, 2, 20000), np.arange(1, 5000, dtype=np.float64),
                        [2.0**-53, 1 - 2.0**-53, 5e-324]])
    got = torch.ops.radi_fast._portable_log(torch.from_numpy(x)).numpy()
    ulps = np.abs(got - np.log(x)) / np.spacing(np.abs(np.log(x)) + 1e-300)
    assert ulps.max() <= 4


# --------------------------------------------------------------------------------------------
# exactness of the op
# --------------------------------------------------------------------------------------------
def expected_output(scores, hot, cold, scheme, alpha, seed, offset, lengths=None):
    """The op's contract from its parts: stable ranking + exact top-k of the C++ keys."""
    ranking = stable_ranking(scores, lengths)
    rows = []
    for b in range(scores.shape[0]):
        length = scores.shape[1] if lengths is None else int(lengths[b])
        m = length - hot
        keys = torch.ops.radi_fast._cold_keys(m, scheme, alpha, seed, offset, b).tolist()
        drawn = sorted(range(m), key=lambda j: (-keys[j], j))[:cold]
        rows.append(ranking[b, :hot].tolist() + [int(ranking[b, hot + j]) for j in drawn])
    return torch.tensor(rows, dtype=torch.int64).reshape(scores.shape[0], hot + cold)


@needs_ext
@pytest.mark.parametrize("scheme, alpha", [
    ("exp", 0.0), ("exp", 0.01), ("exp", 1.0), ("exp", 1000.0),
    ("zipf", 0.0), ("zipf", 0.5), ("zipf", 1.0), ("zipf", 3.0), ("random", 1.0),
])
@pytest.mark.parametrize("hot, cold", [(0, 1), (5, 10), (20, 40), (3, 97), (0, 100)])
def test_cold_list_is_exact_topk_of_keys(scheme, alpha, hot, cold):
    g = torch.Generator().manual_seed(hot * 1000 + cold)
    scores = torch.randn(6, 100, generator=g)
    lengths = torch.tensor([100, 100, 99, 60, hot + cold, 100]) if hot + cold <= 60 else None
    for seed, offset in [(1, 0), (2**62 + 3, 17)]:
        out = op(scores, hot, cold, scheme, alpha, seed, offset, lengths)
        assert torch.equal(out, expected_output(scores, hot, cold, scheme, alpha, seed, offset, lengths))


def score_rows(kind: str, b: int, n: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(n + len(kind))
    if kind == "normal":
        x = torch.randn(b, n, generator=g)
    elif kind == "clustered":  # every score in one bucket of the CPU kernel's radix pre-pass
        x = 1.0 + 1e-4 * torch.rand(b, n, generator=g)
    elif kind == "ties":
        x = torch.randint(-4, 5, (b, n), generator=g).float()
        x[:, ::5] = -0.0
    else:  # "wide": logits over many binades, both signs
        x = torch.randn(b, n, generator=g) * torch.exp(4 * torch.randn(b, n, generator=g))
    return x.to(dtype)


@needs_ext
@pytest.mark.parametrize("kind", ["normal", "clustered", "ties", "wide"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scheme, alpha", [("zipf", 1.0), ("exp", 0.01), ("random", 0.0)])
def test_exact_on_large_rows(kind, dtype, scheme, alpha):
    """Rows of >= 1024 answers take the radix pre-pass on the CPU: same contract."""
    scores = score_rows(kind, 4, 3589, dtype)
    lengths = torch.tensor([3589, 1024, 2000, 3000])
    for hot, cold, lens in [(100, 10, None), (0, 300, lengths), (700, 40, lengths), (1, 1023, lengths)]:
        out = op(scores, hot, cold, scheme, alpha, 5, 6, lens)
        assert torch.equal(out, expected_output(scores, hot, cold, scheme, alpha, 5, 6, lens))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_hot_list_is_top_hot_with_index_tie_rule(dtype):
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(-3, 4, (16, 200), generator=g).to(dtype)  # many ties
    scores[0, :] = 0.0
    scores[0, ::3] = -0.0  # -0.0 ties with +0.0
    scores[1] = torch.linspace(-1, 1, 200).to(dtype)  # bf16/fp16 rounding creates runs of ties
    lengths = torch.randint(50, 201, (16,), generator=g)
    for lens in (None, lengths):
        out = op(scores, 30, 7, "zipf", 1.0, 5, 0, lens)
        ranking = stable_ranking(scores, lens)
        assert torch.equal(out[:, :30], ranking[:, :30])
        assert torch.equal(out[0, :30], torch.arange(30))  # all equal: index order
    assert out.dtype == torch.int64 and out.shape == (16, 37)


@needs_ext
@pytest.mark.parametrize("scheme", ["exp", "zipf", "random"])
def test_no_duplicates_and_in_range(scheme):
    g = torch.Generator().manual_seed(11)
    for n, hot, cold in [(1, 0, 1), (1, 1, 0), (7, 0, 7), (7, 3, 4), (300, 100, 10), (3589, 100, 500)]:
        b = 9
        scores = torch.randn(b, n, generator=g)
        lengths = torch.randint(hot + cold, n + 1, (b,), generator=g)
        for lens in (None, lengths):
            out = op(scores, hot, cold, scheme, 0.7, 123, 4, lens)
            assert out.shape == (b, hot + cold)
            limit = torch.full((b,), n) if lens is None else lens
            assert bool((out >= 0).all()) and bool((out < limit[:, None]).all())
            for row in out.tolist():
                assert len(set(row)) == len(row)


@needs_ext
def test_degenerate_shapes():
    assert op(torch.randn(0, 5), 2, 2, "exp", 1.0, 0).shape == (0, 4)
    assert op(torch.randn(3, 5), 0, 0, "exp", 1.0, 0).shape == (3, 0)
    assert op(torch.randn(3, 0), 0, 0, "exp", 1.0, 0).shape == (3, 0)
    scores = torch.randn(4, 6)
    full = op(scores, 0, 6, "random", 1.0, 9)  # every answer drawn: a permutation per row
    assert torch.equal(full.sort(dim=1).values, torch.arange(6).expand(4, 6))
    assert torch.equal(op(scores, 6, 0, "zipf", 1.0, 9), stable_ranking(scores))


@needs_ext
def test_padding_values_are_ignored():
    scores = torch.randn(3, 10)
    lengths = torch.tensor([10, 6, 4])
    padded = scores.clone()
    padded[1, 6:] = float("nan")
    padded[2, 4:] = float("inf")
    assert torch.equal(op(padded, 2, 2, "zipf", 1.0, 1, 0, lengths), op(scores, 2, 2, "zipf", 1.0, 1, 0, lengths))


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def pl_probability(order, p):
    """Plackett-Luce probability of drawing ranks `order` (0-based) in sequence from weights p."""
    remaining, prob = float(sum(p)), 1.0
    for j in order:
        prob *= p[j] / remaining
        remaining -= p[j]
    return prob


def law(m, scheme, alpha):
    return [math.exp(py_log_weight(scheme, alpha, r)) for r in range(1, m + 1)]


def chisquare_p(counts: dict, probs: dict, total: int) -> float:
    cells = sorted(probs)
    obs = np.array([counts.get(c, 0) for c in cells], dtype=float)
    exp = np.array([probs[c] for c in cells]) * total
    assert sum(counts.values()) == total and set(counts) <= set(probs)
    return float(stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def drawn_orders(n, hot, cold, scheme, alpha, rows, seed):
    scores = -torch.arange(n, dtype=torch.float32).expand(rows, n).contiguous()  # rank r <-> index
    out = op(scores, hot, cold, scheme, alpha, seed, 0)
    assert torch.equal(out[:, :hot], torch.arange(hot).expand(rows, hot))
    orders = out[:, hot:] - hot  # 0-based ranks within the remaining list
    uniq, counts = torch.unique(orders, dim=0, return_counts=True)
    return {tuple(u): int(c) for u, c in zip(uniq.tolist(), counts.tolist())}


@needs_ext
@pytest.mark.parametrize("n, hot, cold, scheme, alpha, wrong_alpha", [
    (4, 0, 4, "zipf", 1.0, 1.25),
    (5, 0, 5, "exp", 0.5, 0.65),
    (5, 0, 5, "zipf", 2.0, 2.3),
    (4, 0, 4, "random", 1.0, None),
    (5, 0, 3, "zipf", 1.0, 1.3),
    (7, 2, 4, "exp", 0.3, 0.45),
])
def test_plackett_luce_order_frequencies(n, hot, cold, scheme, alpha, wrong_alpha):
    rows = 60000
    counts = drawn_orders(n, hot, cold, scheme, alpha, rows, seed=2024)
    m = n - hot
    p = law(m, scheme, alpha)
    probs = {o: pl_probability(o, p) for o in itertools.permutations(range(m), cold)}
    assert abs(sum(probs.values()) - 1) < 1e-12
    assert chisquare_p(counts, probs, rows) > P_MIN
    # negative control: the same counts against a nearby wrong law must be rejected
    wrong = law(m, "zipf", 1.0) if wrong_alpha is None else law(m, scheme, wrong_alpha)
    wrong_probs = {o: pl_probability(o, wrong) for o in itertools.permutations(range(m), cold)}
    assert chisquare_p(counts, wrong_probs, rows) < P_CONTROL


RANK_BINS = [1, 2, 3, 4, 5, 6, 8, 11, 16, 21, 31, 51, 101, 201, 501, 1001, None]  # left edges; M + 1 closes


def rank_edges(m: int) -> list:
    return [e for e in RANK_BINS[:-1] if e <= m] + [m + 1]


def binned(ranks: np.ndarray, m: int) -> np.ndarray:
    return np.histogram(ranks, bins=np.array(rank_edges(m)))[0]


def binned_law(m, scheme, alpha):
    p = np.array(law(m, scheme, alpha))
    p /= p.sum()
    edges = rank_edges(m)
    return np.array([p[a - 1:b - 1].sum() for a, b in zip(edges[:-1], edges[1:])])


@needs_ext
@pytest.mark.parametrize("scheme, alpha, wrong", [
    ("exp", 0.1, ("exp", 0.115)),
    ("exp", 0.01, ("exp", 0.0115)),
    ("zipf", 1.0, ("zipf", 1.08)),
    ("zipf", 0.5, ("zipf", 0.58)),
    ("random", 0.0, ("zipf", 0.15)),
])
def test_first_cold_rank_law_n2349(scheme, alpha, wrong):
    n, hot, cold, rows = 2349, 100, 10, 8000
    m = n - hot
    scores = -torch.arange(n, dtype=torch.float32).expand(rows, n).contiguous()
    out = op(scores, hot, cold, scheme, alpha, 77, 1)
    first = (out[:, hot] - hot + 1).numpy()  # 1-based rank within the remaining list
    obs = binned(first, m)
    keep = binned_law(m, scheme, alpha) * rows >= 5
    exp = binned_law(m, scheme, alpha)
    p_right = stats.chisquare(obs[keep], exp[keep] / exp[keep].sum() * obs[keep].sum()).pvalue
    assert p_right > P_MIN
    bad = binned_law(m, *wrong)
    p_wrong = stats.chisquare(obs[keep], bad[keep] / bad[keep].sum() * obs[keep].sum()).pvalue
    assert p_wrong < P_CONTROL


@needs_ext
@pytest.mark.parametrize("scheme, alpha", [("zipf", 1.0), ("exp", 0.05), ("random", 1.0)])
def test_agrees_in_distribution_with_torch_sampler(scheme, alpha):
    sampling = pytest.importorskip("radi_fast.sampling")
    if not hasattr(sampling, "partial_list_torch"):
        pytest.skip("radi_fast.sampling.partial_list_torch not available")
    rows, n, hot, cold = 20000, 200, 20, 5
    g = torch.Generator().manual_seed(8)
    scores = torch.randn(1, n, generator=g).expand(rows, n).contiguous()
    ours = op(scores, hot, cold, scheme, alpha, 31, 0)
    theirs = sampling.partial_list_torch(scores, hot, cold, scheme, alpha, generator=torch.Generator().manual_seed(31))
    assert torch.equal(ours[:, :hot], theirs[:, :hot])
    ranking = stable_ranking(scores[:1])[0]
    rank_of = torch.empty(n, dtype=torch.int64)
    rank_of[ranking] = torch.arange(n)
    m = n - hot
    for j in (0, cold - 1):  # the first and the last draw
        a = binned(rank_of[ours[:, hot + j]].numpy() - hot + 1, m)
        b = binned(rank_of[theirs[:, hot + j]].numpy() - hot + 1, m)
        keep = (a + b) > 10
        assert stats.chi2_contingency(np.stack([a[keep], b[keep]])).pvalue > P_MIN
    # negative control: a different law is detected by the same two-sample test
    other = op(scores, hot, cold, "zipf" if scheme != "zipf" else "exp", 0.5, 31, 0)
    a = binned(rank_of[ours[:, hot]].numpy() - hot + 1, m)
    c = binned(rank_of[other[:, hot]].numpy() - hot + 1, m)
    keep = (a + c) > 10
    assert stats.chi2_contingency(np.stack([a[keep], c[keep]])).pvalue < P_CONTROL


# --------------------------------------------------------------------------------------------
# reproducibility
# --------------------------------------------------------------------------------------------
@needs_ext
def test_determinism_seed_and_offset():
    scores = torch.randn(32, 500, generator=torch.Generator().manual_seed(1))
    a = op(scores, 10, 20, "zipf", 1.0, 42, 0)
    assert torch.equal(a, op(scores, 10, 20, "zipf", 1.0, 42, 0))
    assert not torch.equal(a[:, 10:], op(scores, 10, 20, "zipf", 1.0, 42, 1)[:, 10:])
    assert not torch.equal(a[:, 10:], op(scores, 10, 20, "zipf", 1.0, 43, 0)[:, 10:])
    # seeds and offsets are 64-bit words: Python ints are read modulo 2^64
    assert torch.equal(op(scores, 10, 20, "zipf", 1.0, -1, 0), op(scores, 10, 20, "zipf", 1.0, 2**64 - 1, 0))
    # the dtype of the scores does not change the draws (same ranking)
    assert torch.equal(a, op(scores.double(), 10, 20, "zipf", 1.0, 42, 0))


THREAD_SCRIPT = textwrap.dedent("""
    import hashlib, sys, torch
    torch.set_num_threads(int(sys.argv[1]))
    from radi_fast.ops import sampler
    scores = torch.randn(256, 3589, generator=torch.Generator().manual_seed(5))
    lengths = torch.randint(200, 3590, (256,), generator=torch.Generator().manual_seed(6))
    outs = [sampler.partial_list_op(scores, 100, 10, s, 1.0, 9, 3, lens)
            for s in ("exp", "zipf", "random") for lens in (None, lengths)]
    print(torch.get_num_threads(), hashlib.sha256(torch.cat(outs, 1).numpy().tobytes()).hexdigest())
""")


@needs_ext
def test_independent_of_thread_count():
    digests = set()
    for threads in (1, 2):
        res = subprocess.run([sys.executable, "-c", THREAD_SCRIPT, str(threads)], capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr
        got_threads, digest = res.stdout.split()
        assert int(got_threads) == threads
        digests.add(digest)
    assert len(digests) == 1


# --------------------------------------------------------------------------------------------
# torch.library integration
# --------------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(dtype):
    scores = torch.randn(5, 40, dtype=dtype)
    lengths = torch.tensor([40, 30, 20, 15, 40])
    for args in [(scores, 3, 4, "zipf", 1.0, 7, 0, None), (scores, 0, 10, "exp", 0.2, 1, 5, lengths),
                 (scores, 15, 0, "random", 0.0, 0, 0, None)]:
        torch.library.opcheck(torch.ops.radi_fast.partial_list.default, args)


@needs_ext
def test_torch_compile_traces_the_op():
    def f(scores):
        idx = sampler.partial_list_op(scores, 4, 6, "zipf", 1.0, 11, 2)
        return scores.gather(1, idx).sum(dim=1)

    scores = torch.randn(8, 64)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(scores), f(scores))


# --------------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------------
BAD = [
    ((torch.randn(10), 2, 3, "zipf", 1.0, 0), {}, "scores must be 2-D"),
    ((torch.randn(2, 3, 4), 1, 1, "zipf", 1.0, 0), {}, "scores must be 2-D"),
    ((torch.arange(10).reshape(2, 5), 1, 1, "zipf", 1.0, 0), {}, "scores must be a floating"),
    (([[1.0, 2.0]], 1, 1, "zipf", 1.0, 0), {}, "scores must be a torch.Tensor"),
    ((torch.randn(2, 5), 3, 3, "zipf", 1.0, 0), {}, "hot \\+ cold"),
    ((torch.randn(2, 5), -1, 1, "zipf", 1.0, 0), {}, "hot must be >= 0"),
    ((torch.randn(2, 5), 1, -2, "zipf", 1.0, 0), {}, "cold must be >= 0"),
    ((torch.randn(2, 5), 1.5, 1, "zipf", 1.0, 0), {}, "hot must be an int"),
    ((torch.randn(2, 5), 1, 1, "zipf", -0.1, 0), {}, "alpha"),
    ((torch.randn(2, 5), 1, 1, "zipf", float("nan"), 0), {}, "alpha"),
    ((torch.randn(2, 5), 1, 1, "zipf", float("inf"), 0), {}, "alpha"),
    ((torch.randn(2, 5), 1, 1, "gauss", 1.0, 0), {}, "unknown scheme"),
    ((torch.randn(2, 5), 1, 1, "zipf", 1.0, 0.5), {}, "seed must be an int"),
    ((torch.randn(2, 5), 1, 1, "zipf", 1.0, 0), {"offset": "1"}, "offset must be an int"),
    ((torch.tensor([[0.0, float("nan"), 1.0]]), 1, 1, "zipf", 1.0, 0), {}, "non-finite"),
    ((torch.tensor([[0.0, float("-inf"), 1.0]]), 1, 1, "zipf", 1.0, 0), {}, "non-finite"),
    ((torch.randn(2, 5), 1, 1, "zipf", 1.0, 0), {"lengths": torch.tensor([5])}, "lengths must be 1-D"),
    ((torch.randn(2, 5), 1, 1, "zipf", 1.0, 0), {"lengths": torch.tensor([5.0, 4.0])}, "lengths must be an integer"),
    ((torch.randn(2, 5), 1, 1, "zipf", 1.0, 0), {"lengths": torch.tensor([6, 4])}, "lengths must be <= N"),
    ((torch.randn(2, 5), 2, 1, "zipf", 1.0, 0), {"lengths": torch.tensor([5, 2])}, "min\\(lengths\\)"),
]


@needs_ext
@pytest.mark.parametrize("args, kwargs, match", BAD)
def test_bad_arguments_raise_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        op(*args, **kwargs)


@needs_ext
def test_raw_op_checks_too():
    raw = torch.ops.radi_fast.partial_list
    with pytest.raises(RuntimeError, match="hot \\+ cold"):
        raw(torch.randn(2, 5), 3, 3, "zipf", 1.0, 0)
    with pytest.raises(RuntimeError, match="unknown scheme"):
        raw(torch.randn(2, 5), 1, 1, "gauss", 1.0, 0)
    with pytest.raises(RuntimeError, match="alpha"):
        raw(torch.randn(2, 5), 1, 1, "exp", -1.0, 0)
    with pytest.raises(RuntimeError, match="2-D"):
        raw(torch.randn(5), 1, 1, "exp", 1.0, 0)
    with pytest.raises(RuntimeError, match="non-finite"):
        raw(torch.tensor([[1.0, float("nan")]]), 1, 1, "exp", 1.0, 0)
    with pytest.raises(RuntimeError, match="lengths"):
        raw(torch.randn(2, 5), 1, 1, "exp", 1.0, 0, 0, torch.tensor([5, 1]))


# --------------------------------------------------------------------------------------------
# build / fallback plumbing
# --------------------------------------------------------------------------------------------
def test_extension_present_when_required():
    """CI sets RADI_FAST_REQUIRE_EXT=1: then a missing extension is a failure, not a skip."""
    if os.environ.get("RADI_FAST_REQUIRE_EXT", "") not in ("1", "true", "yes"):
        pytest.skip("RADI_FAST_REQUIRE_EXT is not set")
    assert sampler.compiled_available(), sampler.extension_status()


FALLBACK_SCRIPT = textwrap.dedent("""
    import warnings, torch
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        from radi_fast.ops import sampler
        from radi_fast import sampling
        assert not sampler.compiled_available()
        status = sampler.extension_status()
        assert status["extension"] is False and "RADI_FAST_NO_EXT" in status["error"], status
        for _ in range(3):
            sampling.sample_partial_list(torch.randn(4, 30), 2, 3, "zipf", 1.0)
        sampler.warn_fallback_once()
    ours = [w for w in caught if "radi_fast._C" in str(w.message)]
    print(len(ours))
""")


def test_fallback_warns_once_without_extension():
    env = dict(os.environ, RADI_FAST_NO_EXT="1")
    res = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == "1"


def test_extension_status_shape():
    status = sampler.extension_status()
    assert set(status) >= {"extension", "cuda_kernels", "error"}
    assert status["extension"] == sampler.compiled_available()
    assert (status["error"] is None) == status["extension"]


# --------------------------------------------------------------------------------------------
# CUDA == CPU
# --------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hot, cold", [(100, 10), (0, 64), (5, 65), (30, 300), (0, 0)])
@pytest.mark.parametrize("scheme, alpha", [("exp", 0.05), ("zipf", 1.0), ("random", 0.0), ("exp", 1000.0)])
def test_cuda_equals_cpu_bit_for_bit(dtype, hot, cold, scheme, alpha):
    g = torch.Generator().manual_seed(hot + cold)
    scores = torch.randint(-50, 50, (64, 3589), generator=g).to(dtype) / 7  # ties included
    scores[0, :100] = -0.0
    lengths = torch.randint(max(hot + cold, 1), 3590, (64,), generator=g)
    for lens in (None, lengths):
        cpu = op(scores, hot, cold, scheme, alpha, 1234, 56, lens)
        gpu = op(scores.cuda(), hot, cold, scheme, alpha, 1234, 56, None if lens is None else lens.cuda())
        assert gpu.device.type == "cuda"
        assert torch.equal(cpu, gpu.cpu())

