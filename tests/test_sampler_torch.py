"""The pure-PyTorch sampler draws the compiled op's sub-lists bit for bit.

``radi_fast.ops.sampler_torch`` ports csrc/philox.h (Philox4x32-10, the counter/key words, the
52-bit uniforms, the portable log) to int64/float64 PyTorch. Checked against the compiled op's
own pieces (uniforms, keys, log) and against its output over schemes, laws, dtypes, ragged
lengths, seeds and offsets; then what only the PyTorch op does: [B, N] masks (== the op on the
compacted rows), rows shorter than hot + cold, seeds as tensors, opcheck, and the dispatch
(``sample_partial_list`` gives the same lists on either path). Needs the extension (skips
otherwise, except the structural tests).
"""
from __future__ import annotations

import pytest
import torch

from radi_fast import sampling
from radi_fast.ops import sampler, sampler_torch as ST

needs_ext = pytest.mark.skipif(not sampler.compiled_available(),
                               reason=f"radi_fast._C is not built ({sampler.extension_status()['error']})")
SCHEMES = [("zipf", 1.0), ("zipf", 0.0), ("zipf", 2.5), ("exp", 0.01), ("exp", 1.0), ("exp", 1000.0),
           ("random", 1.0)]
SEEDS = [(0, 0), (1234, 5), (-1, 2**40 + 7), (2**63 - 1, -3)]


def torch_lists(scores, hot, cold, scheme, alpha, seed, offset, valid=None):
    return ST.partial_lists(scores, valid, hot, cold, scheme, alpha, _as_tensor(seed, offset))


def _as_tensor(seed, offset):
    """(seed, offset) as the int64 pair the PyTorch op takes (Python ints read modulo 2^64)."""
    wrap = lambda v: (v + 2**63) % 2**64 - 2**63  # noqa: E731
    return torch.tensor([wrap(seed), wrap(offset)], dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# the pieces
# --------------------------------------------------------------------------------------------
def test_philox_known_answers():
    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for (c0, c1, c2, c3), (k0, k1), want in kat:
        got = ST.philox4x32_10(torch.tensor([c0]), c1, c2, c3, k0, k1)
        assert tuple(int(x) for x in got) == want
        # the same with every word a tensor (the path of seeds that stay on the device)
        words = [torch.tensor([w]) for w in (c0, c1, c2, c3, k0, k1)]
        assert tuple(int(x) for x in ST.philox4x32_10(*words)) == want


@needs_ext
@pytest.mark.parametrize("seed, offset", SEEDS)
def test_uniforms_equal_compiled(seed, offset):
    for row in (0, 3, 2**31 + 5):
        assert torch.equal(ST.philox_uniforms(seed, offset, row, 300),
                           torch.ops.radi_fast._uniforms(300, seed, offset, row))


@needs_ext
def test_portable_log_equals_compiled():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.exp(torch.empty(50000, dtype=torch.float64).uniform_(-745, 709, generator=g)),
                   torch.rand(50000, dtype=torch.float64, generator=g), torch.arange(1.0, 5000, dtype=torch.float64),
                   torch.tensor([5e-324, 1e-310, 2.0**-53, 1 - 2.0**-53, 1.0, 2.0, 0.0, -0.0, -3.0, float("inf")],
                                dtype=torch.float64)])
    assert torch.equal(ST.portable_log(x), torch.ops.radi_fast._portable_log(x))
    assert torch.isnan(ST.portable_log(torch.tensor([float("nan")], dtype=torch.float64))).all()


@needs_ext
@pytest.mark.parametrize("scheme, alpha", SCHEMES)
def test_cold_keys_equal_compiled(scheme, alpha):
    keys = ST.cold_keys(scheme, alpha, 99, 4, torch.tensor([0, 2, 77]), 3000)
    for i, row in enumerate((0, 2, 77)):
        assert torch.equal(keys[i], torch.ops.radi_fast._cold_keys(3000, scheme, alpha, 99, 4, row))


# --------------------------------------------------------------------------------------------
# whole sub-lists: bit for bit
# --------------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("scheme, alpha", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_equal_to_compiled_op(scheme, alpha, dtype):
    g = torch.Generator().manual_seed(7)
    scores = (torch.randn(12, 400, generator=g) * 3).to(dtype)  # fp16/bf16 rounding makes ties
    scores[0, ::4] = -0.0
    scores[1] = 0.0
    lengths = torch.randint(120, 401, (12,), generator=g)
    for hot, cold in [(0, 1), (100, 10), (5, 70), (0, 120), (110, 0), (30, 90)]:
        for seed, offset in SEEDS[:3]:
            for lens in (None, lengths):
                want = sampler.partial_list_op(scores, hot, cold, scheme, alpha, seed, offset, lens)
                got, used = torch_lists(scores, hot, cold, scheme, alpha, seed, offset, lens)
                assert torch.equal(got, want), (hot, cold, seed, offset, lens is None)
                assert bool(used.all())


@needs_ext
@pytest.mark.parametrize("scheme, alpha", [("zipf", 1.0), ("exp", 0.05), ("random", 0.0)])
def test_equal_to_compiled_op_large_rows(scheme, alpha):
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(64, 3589, generator=g)
    lengths = torch.randint(1024, 3590, (64,), generator=g)
    for hot, cold, lens in [(100, 10, None), (100, 10, lengths), (0, 300, lengths), (1000, 24, None)]:
        want = sampler.partial_list_op(scores, hot, cold, scheme, alpha, 11, 2, lens)
        assert torch.equal(torch_lists(scores, hot, cold, scheme, alpha, 11, 2, lens)[0], want)


@needs_ext
def test_exact_without_the_cpu_shortcut(monkeypatch):
    """The CPU shortcut (approximate keys pick candidates) and its proof: with an absurd error
    bound no row is proven and every row is recomputed exactly in full; with no candidate
    margin the proof fails on many rows. The lists never change."""
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(16, 500, generator=g)
    want = sampler.partial_list_op(scores, 50, 20, "zipf", 1.0, 3, 4)
    for key_error, margin in [(1e3, 8), (1e-11, 0), (1e-11, 200)]:
        monkeypatch.setattr(ST, "KEY_ERROR", key_error)
        monkeypatch.setattr(ST, "CANDIDATE_MARGIN", margin)
        assert torch.equal(torch_lists(scores, 50, 20, "zipf", 1.0, 3, 4)[0], want)


@needs_ext
def test_masked_rows_equal_compiled_op_on_compacted_rows():
    """A [B, N] mask (any positions) draws what the op draws on each row's valid answers moved
    to the front in column order (the row index, part of the Philox counter, unchanged)."""
    g = torch.Generator().manual_seed(9)
    B, N = 10, 300
    scores = torch.randn(B, N, generator=g)
    mask = torch.rand(B, N, generator=g) < 0.7
    scores[~mask] = float("nan")  # never read
    perm = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # valid columns first
    compact = scores.gather(1, perm)
    lengths = mask.sum(1)
    for scheme, alpha in SCHEMES[:5]:
        got, used = torch_lists(scores, 40, 25, scheme, alpha, 17, 1, mask)
        want = perm.gather(1, sampler.partial_list_op(compact, 40, 25, scheme, alpha, 17, 1, lengths))
        assert torch.equal(got, want) and bool(used.all())
        assert bool(mask.gather(1, got).all())


def test_short_rows_use_what_they_have():
    scores = torch.randn(4, 30, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([30, 12, 5, 0])  # hot + cold = 20: rows 1-3 are short
    ids, used = torch_lists(scores, 8, 12, "zipf", 1.0, 5, 6, lengths)
    ranking = ST.teacher_ranking(scores, lengths)
    assert used.tolist()[0] == [True] * 20
    assert used[1].tolist() == [True] * 8 + [True] * 4 + [False] * 8  # 12 - 8 = 4 cold answers
    assert used[2].tolist() == [True] * 5 + [False] * 3 + [False] * 12  # 5 hot, no cold
    assert not bool(used[3].any())
    for b, n_valid in enumerate(lengths.tolist()):
        hot = min(8, n_valid)
        assert ids[b, :hot].tolist() == ranking[b, :hot].tolist()
        cold = ids[b, 8:][used[b, 8:]].tolist()
        if n_valid < 20:  # a short row draws all it has
            assert sorted(cold) == sorted(ranking[b, 8:n_valid].tolist())
    # the long row is the same as in a batch of long rows only
    full, _ = torch_lists(scores, 8, 12, "zipf", 1.0, 5, 6, None)
    assert torch.equal(ids[0], full[0])


def test_seed_tensor_on_the_device_or_the_host():
    scores = torch.randn(6, 80, generator=torch.Generator().manual_seed(4))
    a = ST.partial_lists(scores, None, 10, 10, "exp", 0.1, torch.tensor([123, 456]))
    b = ST.partial_list_masked_op(scores, None, 10, 10, "exp", 0.1, torch.tensor([123, 456]))
    assert torch.equal(a[0], b[0])
    c = ST.partial_lists(scores, None, 10, 10, "exp", 0.1, torch.tensor([123, 457]))
    assert not torch.equal(a[0][:, 10:], c[0][:, 10:])


@pytest.mark.parametrize("valid", [None, "lengths", "mask"])
def test_opcheck(valid):
    scores = torch.randn(5, 40)
    v = {None: None, "lengths": torch.tensor([40, 30, 20, 15, 3]),
         "mask": torch.rand(5, 40, generator=torch.Generator().manual_seed(1)) < 0.5}[valid]
    torch.library.opcheck(ST.partial_list_masked_op, (scores, v, 6, 9, "zipf", 1.0, torch.tensor([3, 4])))


# --------------------------------------------------------------------------------------------
# the dispatch: results do not depend on the path
# --------------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("scheme", ["zipf", "exp", "random"])
def test_sample_partial_list_same_on_both_paths(scheme):
    scores = torch.randn(20, 500, generator=torch.Generator().manual_seed(8))
    lengths = torch.randint(110, 501, (20,), generator=torch.Generator().manual_seed(9))
    for lens in (None, lengths):
        outs = [sampling.sample_partial_list(scores, 100, 10, scheme, 1.0, torch.Generator().manual_seed(42), lens,
                                             backend=backend) for backend in ("compiled", "torch", "auto")]
        outs.append(sampling.partial_list_torch(scores, 100, 10, scheme, 1.0, torch.Generator().manual_seed(42), lens))
        assert all(torch.equal(outs[0], o) for o in outs[1:])
    # the generator advances the same way on both paths
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    sampling.sample_partial_list(scores, 5, 5, scheme, 1.0, g1, backend="compiled")
    sampling.sample_partial_list(scores, 5, 5, scheme, 1.0, g2, backend="torch")
    assert torch.equal(g1.get_state(), g2.get_state())


@needs_ext
def test_draw_partial_lists_picks_the_compiled_op_only_where_it_applies(monkeypatch):
    calls = []
    real = sampler.partial_list_op
    monkeypatch.setattr(sampler, "partial_list_op", lambda *a, **k: calls.append(1) or real(*a, **k))
    scores = torch.randn(4, 50)
    sampling.draw_partial_lists(scores, 5, 5, "zipf", 1.0, None, None)
    sampling.draw_partial_lists(scores, 5, 5, "zipf", 1.0, None, torch.tensor([50, 40, 30, 10]))
    assert len(calls) == 2
    sampling.draw_partial_lists(scores, 5, 5, "zipf", 1.0, None, torch.tensor([50, 40, 30, 9]))  # a short row
    sampling.draw_partial_lists(scores, 5, 5, "zipf", 1.0, None, torch.ones(4, 50, dtype=torch.bool))  # a mask
    assert len(calls) == 2


@needs_ext
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("scheme, alpha", [("zipf", 1.0), ("exp", 0.05), ("random", 0.0)])
def test_cuda_equals_cpu_bit_for_bit(scheme, alpha):
    """On CUDA the PyTorch sampler (every key exact, seeds on the device or read from the host)
    draws the CPU op's lists; so does the CUDA op when it is built."""
    g = torch.Generator().manual_seed(12)
    scores = torch.randn(32, 2349, generator=g)
    mask = torch.rand(32, 2349, generator=g) < 0.8
    want = sampler.partial_list_op(scores, 100, 10, scheme, alpha, 77, 3)
    for seeds in (_as_tensor(77, 3), _as_tensor(77, 3).cuda()):
        got, used = ST.partial_list_masked_op(scores.cuda(), None, 100, 10, scheme, alpha, seeds)
        assert torch.equal(got.cpu(), want) and bool(used.all())
        masked, _ = ST.partial_list_masked_op(scores.cuda(), mask.cuda(), 100, 10, scheme, alpha, seeds)
        assert torch.equal(masked.cpu(), ST.partial_lists(scores, mask, 100, 10, scheme, alpha, _as_tensor(77, 3))[0])
    if sampler.extension_status()["cuda_kernels"]:
        assert torch.equal(sampler.partial_list_op(scores.cuda(), 100, 10, scheme, alpha, 77, 3).cpu(), want)
