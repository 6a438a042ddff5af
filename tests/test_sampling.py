"""The partial-list sampler (sec. 3.3): hot list, cold-list law (chi-square tests with negative
controls), exact Plackett-Luce order probabilities, dispatch and argument checks."""
import itertools
import types
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import radi_fast.sampling
from radi_fast.reference_listwise import (
    draw_probability_literal,
    rank_probabilities_literal,
    teacher_ranking_literal,
)
from radi_fast.sampling import (
    partial_list_torch,
    rank_log_probs,
    sample_partial_list,
)

N_DRAWS = 20000


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def chi2_pvalue(observed_counts, probabilities, min_expected=5.0):
    """Chi-square goodness-of-fit p-value, merging the low-expectation tail into one bin."""
    observed = np.asarray(observed_counts, dtype=np.float64)
    expected = np.asarray(probabilities, dtype=np.float64) * observed.sum()
    order = np.argsort(-expected, kind="stable")
    observed, expected = observed[order], expected[order]
    keep = expected >= min_expected
    if not keep.all():  # lump all small bins into one
        observed = np.append(observed[keep], observed[~keep].sum())
        expected = np.append(expected[keep], expected[~keep].sum())
    return chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


# ------------------------------------------------------------------------------------------
# structure: hot list, no duplicates, range, padding
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["zipf", "exp", "random"])
def test_hot_list_is_teacher_top_with_tie_rule(scheme):
    scores = torch.randint(0, 5, (8, 40), generator=gen(1)).float()  # many ties
    idx = partial_list_torch(scores, 15, 10, scheme, 1.0, gen(2))
    assert idx.shape == (8, 25) and idx.dtype == torch.int64
    for b in range(8):
        ranking = teacher_ranking_literal(scores[b].tolist())
        row = idx[b].tolist()
        assert row[:15] == ranking[:15]  # ties broken by lower index
        assert len(set(row)) == 25 and set(row[15:]) <= set(ranking[15:])


@pytest.mark.parametrize("scheme", ["zipf", "exp", "random"])
def test_indices_within_lengths(scheme):
    scores = torch.randn(64, 50, generator=gen(3))
    lengths = torch.randint(12, 51, (64,), generator=gen(4))
    lengths[0] = 12  # a row where the whole remaining list must be drawn
    scores = scores.masked_fill(torch.arange(50)[None, :] >= lengths[:, None], float("nan"))  # padding unread
    idx = partial_list_torch(scores, 4, 8, scheme, 2.0, gen(5), lengths)
    assert (idx >= 0).all() and (idx < lengths[:, None]).all()
    assert all(len(set(row)) == 12 for row in idx.tolist())
    for b in range(64):
        assert idx[b, :4].tolist() == teacher_ranking_literal(scores[b].tolist(), int(lengths[b]))[:4]
    assert sorted(idx[0].tolist()) == list(range(12))


def test_deterministic_given_seed_and_cold_zero_draws_nothing():
    scores = torch.randn(5, 30, generator=gen(6))
    a = partial_list_torch(scores, 3, 7, "zipf", 1.0, gen(7))
    b = sample_partial_list(scores, 3, 7, "zipf", 1.0, gen(7), backend="torch")
    assert torch.equal(a, b)
    g = gen(8)
    state = g.get_state()
    top = sample_partial_list(scores, 6, 0, "exp", 1.0, g)
    assert torch.equal(g.get_state(), state)
    assert torch.equal(top, torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :6])


def test_large_shape_runs():
    scores = torch.randn(256, 3589, generator=gen(9))
    idx = partial_list_torch(scores, 100, 10, "zipf", 1.0, gen(10))
    assert idx.shape == (256, 110)
    assert torch.equal(idx[:, :100], torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :100])


# ------------------------------------------------------------------------------------------
# statistics: the first cold draw follows p_r; whole orders follow Plackett-Luce
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme, alpha, wrong", [
    ("exp", 0.3, ("exp", 0.4)),
    ("exp", 0.0, ("zipf", 0.1)),  # alpha = 0 is uniform
    ("zipf", 1.0, ("zipf", 1.15)),
    ("zipf", 2.0, ("exp", 1.0)),
    ("random", 1.0, ("zipf", 0.1)),
])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("sampler", [partial_list_torch, sample_partial_list], ids=["torch", "dispatch"])
def test_first_cold_draw_follows_rank_law(scheme, alpha, wrong, padded, sampler):
    """``dispatch`` checks whichever path ``sample_partial_list`` takes here (compiled op if built)."""
    N, hot = 50, 5
    n_valid = 38 if padded else N
    row = torch.randn(N, generator=gen(11))
    scores = row.expand(N_DRAWS, N).contiguous()
    lengths = torch.full((N_DRAWS,), n_valid) if padded else None
    idx = sampler(scores, hot, 3, scheme, alpha, gen(12), lengths)
    remaining = teacher_ranking_literal(row.tolist(), n_valid)[hot:]
    rank_of = {a: r for r, a in enumerate(remaining)}  # 0-based rank within the remaining list
    counts = np.bincount([rank_of[a] for a in idx[:, hot].tolist()], minlength=n_valid - hot)
    assert chi2_pvalue(counts, rank_probabilities_literal(n_valid - hot, scheme, alpha)) > 1e-3
    # negative control: the same draws are rejected under a wrong law, so the test can fail
    assert chi2_pvalue(counts, rank_probabilities_literal(n_valid - hot, *wrong)) < 1e-6


@pytest.mark.parametrize("scheme, alpha, wrong_alpha", [("exp", 1.0, 1.3), ("zipf", 1.5, 1.8), ("random", 0.0, None)])
@pytest.mark.parametrize("sampler", [partial_list_torch, sample_partial_list], ids=["torch", "dispatch"])
def test_whole_orders_match_plackett_luce(scheme, alpha, wrong_alpha, sampler):
    row = torch.tensor([0.3, 2.0, -1.0, 1.0])  # ranking: answers 1, 3, 0, 2
    ranking = teacher_ranking_literal(row.tolist())
    idx = sampler(row.expand(N_DRAWS, 4).contiguous(), 0, 4, scheme, alpha, gen(13))
    rank_of = {a: r + 1 for r, a in enumerate(ranking)}
    orders = list(itertools.permutations(range(1, 5)))
    position = {o: i for i, o in enumerate(orders)}
    counts = np.bincount([position[tuple(rank_of[a] for a in draw)] for draw in idx.tolist()], minlength=24)
    probs = rank_probabilities_literal(4, scheme, alpha)
    exact = [draw_probability_literal(o, probs) for o in orders]
    assert sum(exact) == pytest.approx(1.0)
    assert chi2_pvalue(counts, exact) > 1e-3
    # negative controls: a different alpha, and the law of two draws that forget to renormalise
    # after the first one (prob ∝ p_{r_1} p_{r_2})
    wrong_laws = [] if wrong_alpha is None else [[draw_probability_literal(o, rank_probabilities_literal(
        4, scheme, wrong_alpha)) for o in orders]]
    if scheme != "random":
        unnormalised = [float(np.prod([probs[r - 1] for r in o[:2]])) for o in orders]
        wrong_laws.append([p / sum(unnormalised) for p in unnormalised])
    else:
        wrong_laws.append(  # PL on the exp law: not uniform
            [draw_probability_literal(o, rank_probabilities_literal(4, "exp", 0.3)) for o in orders])
    for wrong in wrong_laws:
        assert chi2_pvalue(counts, wrong) < 1e-6


@pytest.mark.parametrize("scheme, alpha", [("exp", 0.7), ("zipf", 1.3), ("random", 2.0)])
def test_rank_log_probs_match_literal(scheme, alpha):
    logp = rank_log_probs(45, scheme, alpha)
    assert logp.dtype == torch.float64 and logp.shape == (45,)
    np.testing.assert_allclose(logp.exp().numpy(), rank_probabilities_literal(45, scheme, alpha), rtol=1e-12)
    assert torch.isfinite(rank_log_probs(3000, "exp", 1000.0)).all()  # a very peaked law stays finite


# ------------------------------------------------------------------------------------------
# dispatch to the compiled op
# ------------------------------------------------------------------------------------------
def _install_op(monkeypatch, module):
    monkeypatch.setattr(radi_fast.sampling, "compiled_sampler", module)


def test_dispatch_without_the_extension_falls_back_with_one_warning(monkeypatch):
    warned = []
    _install_op(monkeypatch, types.SimpleNamespace(compiled_available=lambda: False,
                                                   warn_fallback_once=lambda: warned.append(1)))
    scores = torch.randn(4, 20, generator=gen(14))
    out = sample_partial_list(scores, 2, 5, "zipf", 1.0, gen(15))
    assert torch.equal(out, partial_list_torch(scores, 2, 5, "zipf", 1.0, gen(15)))
    assert warned == [1]
    with warnings.catch_warnings():  # backend="torch" asks for the fallback: no warning
        warnings.simplefilter("error")
        sample_partial_list(scores, 2, 5, "zipf", 1.0, gen(15), backend="torch")
    assert warned == [1]
    with pytest.raises(ValueError, match="backend"):
        sample_partial_list(scores, 2, 5, "zipf", 1.0, gen(15), backend="compiled")


def test_dispatch_uses_compiled_op_with_seed_and_offset(monkeypatch):
    calls = []
    sentinel = torch.arange(12).reshape(2, 6)

    def partial_list_op(scores, hot, cold, scheme, alpha, seed, offset, lengths):
        calls.append(dict(hot=hot, cold=cold, scheme=scheme, alpha=alpha, seed=seed, offset=offset, lengths=lengths))
        return sentinel

    _install_op(monkeypatch, types.SimpleNamespace(compiled_available=lambda: True, partial_list_op=partial_list_op))
    scores = torch.randn(2, 20, generator=gen(16))
    lengths = torch.tensor([20, 10])
    assert sample_partial_list(scores, 2, 4, "exp", 0.5, gen(17), lengths) is sentinel
    expected_seed, expected_offset = torch.randint(0, 2**62, (2,), generator=gen(17)).tolist()
    (call,) = calls
    assert (call["hot"], call["cold"], call["scheme"], call["alpha"]) == (2, 4, "exp", 0.5)
    assert (call["seed"], call["offset"]) == (expected_seed, expected_offset)
    assert isinstance(call["seed"], int) and torch.equal(call["lengths"], lengths)
    # backend="torch" and cold == 0 never call the op
    sample_partial_list(scores, 2, 4, "exp", 0.5, gen(17), backend="torch")
    sample_partial_list(scores, 6, 0, "exp", 0.5, gen(17))
    assert len(calls) == 1


def test_dispatch_skips_unbuilt_op(monkeypatch):
    def partial_list_op(*args):
        raise AssertionError("must not be called when not compiled")

    _install_op(monkeypatch, types.SimpleNamespace(compiled_available=lambda: False, partial_list_op=partial_list_op,
                                                   warn_fallback_once=lambda: None))
    scores = torch.randn(3, 12, generator=gen(18))
    assert torch.equal(sample_partial_list(scores, 1, 3, "random", 1.0, gen(19)),
                       partial_list_torch(scores, 1, 3, "random", 1.0, gen(19)))


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [partial_list_torch, sample_partial_list])
@pytest.mark.parametrize("args, kwargs, match", [
    ((torch.randn(10), 2, 3, "zipf", 1.0), {}, "scores"),
    ((torch.tensor([[0.0, float("nan"), 1.0]]), 1, 1, "zipf", 1.0), {}, "scores"),
    ((torch.zeros(2, 5, dtype=torch.long), 1, 1, "zipf", 1.0), {}, "scores"),
    ((torch.randn(2, 10), 2, 3, "zipf", -0.5), {}, "alpha"),
    ((torch.randn(2, 10), 2, 3, "full", 1.0), {}, "scheme"),
    ((torch.randn(2, 10), 8, 3, "exp", 1.0), {}, "hot \\+ cold"),
    ((torch.randn(2, 10), -1, 3, "exp", 1.0), {}, "hot"),
    ((torch.randn(2, 10), 1, -3, "exp", 1.0), {}, "cold"),
    ((torch.randn(2, 10), 2, 3, "exp", 1.0), {"lengths": torch.tensor([10, 4])}, "hot \\+ cold"),
    ((torch.randn(2, 10), 2, 3, "exp", 1.0), {"lengths": torch.tensor([10, 11])}, "lengths"),
    ((torch.randn(2, 10), 2, 3, "exp", 1.0), {"lengths": torch.tensor([10.0, 9.0])}, "lengths"),
])
def test_bad_input_raises(fn, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_rank_log_probs_bad_input():
    with pytest.raises(ValueError, match="scheme"):
        rank_log_probs(5, "uniform", 1.0)
    with pytest.raises(ValueError, match="alpha"):
        rank_log_probs(5, "zipf", -1.0)
