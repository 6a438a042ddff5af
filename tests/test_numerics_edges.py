"""Numerics at the edges (the rules: docs/numerics.md), property-based.

Each property runs a bounded number of hypothesis examples (``deadline=None``: the Triton
interpreter's first call compiles nothing but is slow) so the module stays well under a minute:
W in [0, 1] with its marginals at any lam (1e-30 .. 1e30 x the mean uncertainty) and teacher
scale (1e-6 .. 1e19), bounded per-sample losses, exact zeros of U for duplicated answers, the
CPU path against the Triton interpreter across scales, gradients against float64 finite
differences on extreme gaps, every loss and metric on B = 0 and N = 0, illegal argument types.
"""
import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

import radi_fast  # noqa: E402
from radi_fast import (RadiPairwiseLoss, classification_loss, pairwise_uncertainty, radi_listwise_loss,  # noqa: E402
                       radi_pairwise_loss, sinkhorn_margin_weights)
from radi_fast.metrics import acc_at_1, hit_at_k, ivqa_accuracy, ndcg_at_k  # noqa: E402

PROPS = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
# largest teacher scale each input dtype can hold with room for the noise (fp16 tops out at 65504)
MAX_LOG_SCALE = {"fp16": 3, "bf16": 19, "fp32": 19, "fp64": 19}


# the decades of the reproducers, then anything in between
LOG_SCALES = st.one_of(st.sampled_from([-6.0, 0.0, 3.0, 4.0, 10.0, 19.0]), st.floats(-6, 19))
LOG_RATIOS = st.one_of(st.sampled_from([-30.0, -12.0, -3.0, 0.0, 30.0]), st.floats(-30, 30))


def _triton_available():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


needs_triton = pytest.mark.skipif(not _triton_available(), reason="triton is not installed")


def teacher(seed, B, T, K, scale, dtype, duplicate=False):
    g = torch.Generator().manual_seed(seed)
    mc = torch.randn(B, T, K, generator=g, dtype=torch.float64) * scale
    if duplicate and K >= 2:
        mc[:, :, K - 1] = mc[:, :, 0]  # answers 0 and K - 1 have identical MC logits
    return mc.to(dtype)


def mean_uncertainty64(mc):
    U = pairwise_uncertainty(mc.double())
    K = U.shape[-1]
    return float(U.sum() / max(1, U.shape[0] * K * (K - 1)))


# ----------------------------------------------------------------------------- rows 1 and 4: W
@PROPS
@given(seed=st.integers(0, 2**16), K=st.integers(2, 7), T=st.integers(2, 4), dtype=st.sampled_from(sorted(DTYPES)),
       log_ratio=LOG_RATIOS, log_scale=LOG_SCALES, scheme=st.sampled_from(["plain", "anderson"]))
def test_sinkhorn_weights_in_unit_interval_with_ones_marginals(seed, K, T, dtype, log_ratio, log_scale, scheme):
    log_scale = min(log_scale, MAX_LOG_SCALE[dtype])
    mc = teacher(seed, 2, T, K, 10.0 ** log_scale, DTYPES[dtype])
    mean_u = mean_uncertainty64(mc)
    lam = 10.0 ** log_ratio * (mean_u if mean_u > 0 else 1.0)
    W, info = sinkhorn_margin_weights(mc, lam=lam, sinkhorn=scheme, return_info=True)
    assert torch.isfinite(W).all()
    assert float(W.min()) >= 0 and float(W.max()) <= 1
    compute = torch.float64 if dtype == "fp64" else torch.float32
    # the last half-step normalises the columns: ones to the rounding of the largest cost
    # (ops/teacher.py MAX_COST), at any lam; the rows where the stopping test was met
    col_tol = 1e-3 if compute == torch.float32 else 1e-5
    assert float((W.sum(1) - 1).abs().max()) <= col_tol
    converged = info.iterations < 100
    rows = (W.sum(2) - 1).abs().amax(dim=1)
    assert bool((rows[converged] <= 1e-3).all()), (rows, info.iterations)


@PROPS
@given(seed=st.integers(0, 2**16), K=st.integers(2, 8), dtype=st.sampled_from(sorted(DTYPES)),
       log_ratio=LOG_RATIOS, log_scale=LOG_SCALES, margin=st.sampled_from([0.1, 1.0, 10.0]),
       backend=st.sampled_from(["torch", "triton"] if _triton_available() else ["torch"]))
def test_per_sample_loss_at_most_max_gap_plus_margin(seed, K, dtype, log_ratio, log_scale, margin, backend):
    log_scale = min(log_scale, MAX_LOG_SCALE[dtype])
    mc = teacher(seed, 2, 3, K, 10.0 ** log_scale, DTYPES[dtype])
    s = torch.randn(2, K, generator=torch.Generator().manual_seed(seed + 1)).to(DTYPES[dtype])
    mean_u = mean_uncertainty64(mc)
    lam = 10.0 ** log_ratio * (mean_u if mean_u > 0 else 1.0)
    # W <= 1 holds after any number of iterations: a short budget keeps the interpreter quick
    max_iter = 12 if backend == "triton" else 100
    loss = radi_pairwise_loss(s, mc, margin=margin, lam=lam, reduction="none", backend=backend, max_iter=max_iter)
    assert torch.isfinite(loss).all() and float(loss.min()) >= 0
    s64 = s.double()
    bound = (s64[:, None, :] - s64[:, :, None]).amax(dim=(1, 2)).clamp_min(0) + margin
    assert bool((loss.double() <= bound * (1 + 1e-3) + 1e-6).all()), (loss, bound)


def test_row1_reproducers():
    torch.manual_seed(0)
    s, mc = torch.randn(1, 5), torch.randn(1, 3, 5) * 1e4
    W = sinkhorn_margin_weights(mc, lam=0.5)
    assert float(W.max()) <= 1 and float(W.min()) >= 0
    for lam in (0.5, 1e-12, 1e-30):
        for dtype in (torch.float32, torch.float64):
            loss = radi_pairwise_loss(s.to(dtype), mc.to(dtype), lam=lam, backend="torch")
            gap = float((s[0][None, :] - s[0][:, None]).max())
            assert math.isfinite(float(loss)) and 0 <= float(loss) <= gap + 1 + 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_row4_logits_whose_squares_overflow_are_scaled(dtype):
    torch.manual_seed(0)
    s, mc = torch.randn(2, 6), torch.randn(2, 3, 6) * 1e19
    expected = radi_pairwise_loss(s.to(dtype).double(), mc.to(dtype).double() / 2.0**63, backend="torch")
    got = radi_pairwise_loss(s.to(dtype), mc.to(dtype), backend="torch")  # lam auto: scale-free
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    U = pairwise_uncertainty(mc.to(dtype))
    assert not torch.isnan(U).any() and float(U.min()) >= 0  # inf only where U itself overflows fp32
    W = sinkhorn_margin_weights(mc.to(dtype))
    assert torch.isfinite(W).all() and float(W.max()) <= 1


# ----------------------------------------------------------------------------- rows 2 and 3: exact zeros
@PROPS
@given(seed=st.integers(0, 2**16), K=st.integers(2, 7), T=st.integers(2, 5), log_scale=LOG_SCALES,
       dtype=st.sampled_from(["bf16", "fp32", "fp64"]))
def test_uncertainty_is_exactly_zero_for_duplicates_and_symmetric(seed, K, T, log_scale, dtype):
    mc = teacher(seed, 2, T, K, 10.0 ** log_scale, DTYPES[dtype], duplicate=True)
    U = pairwise_uncertainty(mc)
    assert bool((U[:, 0, K - 1] == 0).all()) and bool((U[:, K - 1, 0] == 0).all())
    assert torch.equal(U, U.transpose(1, 2))
    assert bool((U.diagonal(dim1=1, dim2=2) == 0).all()) and float(U.min()) >= 0


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row3_uncertainty_margins_of_identical_answers_on_both_backends(dtype):
    col = torch.tensor([1.0, 0, 0, 0, 2])
    mc = torch.stack([col, col], 1)[None].to(dtype)
    for backend in ("torch", "triton"):
        loss = radi_pairwise_loss(torch.zeros(1, 2, dtype=dtype), mc, torch.tensor([[1.0, 0]], dtype=dtype),
                                  margin_mode="uncertainty", backend=backend)
        assert float(loss) == pytest.approx(1e6, rel=1e-6), backend


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row2_identical_passes_give_uniform_weights_on_both_backends(dtype):
    torch.manual_seed(0)
    for _ in range(5):
        s = torch.randn(1, 6, dtype=dtype)
        mc = torch.randn(1, 1, 6, dtype=dtype).expand(1, 3, 6).contiguous()
        t = mc.mean(dim=1)
        order = torch.sort(t, dim=1, descending=True, stable=True).indices
        W = torch.full((6, 6), 1.0 / 5, dtype=torch.float64)
        expected = radi_fast.reference.margin_ranking_loss_literal(s[0, order[0]].double(), t[0, order[0]].double(), W)
        for backend in ("torch", "triton"):
            got = radi_pairwise_loss(s, mc, backend=backend)
            assert float(got) == pytest.approx(float(expected), rel=1e-5), backend


# ----------------------------------------------------------------------------- CPU vs Triton
@needs_triton
@PROPS
@given(seed=st.integers(0, 2**16), K=st.integers(2, 9), log_scale=LOG_SCALES,
       dtype=st.sampled_from(["bf16", "fp32", "fp64"]), mode=st.sampled_from(["ot", "uniform", "uncertainty"]),
       duplicate=st.booleans())
@example(seed=0, K=6, log_scale=19.0, dtype="fp32", mode="ot", duplicate=False)  # row 4: nan vs 0.0
@example(seed=3, K=5, log_scale=0.0, dtype="fp32", mode="uncertainty", duplicate=True)  # row 3
def test_cpu_and_triton_agree_across_scales(seed, K, log_scale, dtype, mode, duplicate):
    mc = teacher(seed, 2, 3, K, 10.0 ** log_scale, DTYPES[dtype], duplicate=duplicate)
    s = torch.randn(2, K, generator=torch.Generator().manual_seed(seed + 7)).to(DTYPES[dtype]) * 3
    args = dict(margin=1.0, margin_mode=mode, reduction="none")
    a = radi_pairwise_loss(s, mc, backend="torch", **args).double()
    b = radi_pairwise_loss(s, mc, backend="triton", **args).double()
    rel = 1e-9 if dtype == "fp64" else 2e-4
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * (1 + float(a.abs().max())) if mode != "uncertainty"
                               else rel * float(a.abs().max() + 1))


# ----------------------------------------------------------------------------- gradients
def _central_difference(f, x, h):
    g = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view_as(x)
        g.view(-1)[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@PROPS
@given(seed=st.integers(0, 2**16), n=st.integers(2, 5), log_gap=st.floats(0, 18),
       loss=st.sampled_from(["listmle", "listnet", "ranknet", "ndcg_loss2pp"]))
def test_listwise_gradients_match_float64_finite_differences_on_extreme_gaps(seed, n, log_gap, loss):
    g = torch.Generator().manual_seed(seed)
    # scores spread over the gap (distinct, well apart), teacher scores random
    s = (torch.randperm(n, generator=g).double() * 10.0 ** log_gap + torch.rand(n, generator=g, dtype=torch.float64))
    s = s[None]
    t = torch.randn(1, n, generator=g, dtype=torch.float64)

    def f(x):
        return float(radi_listwise_loss(x, t, sampling="full", loss=loss, reduction="sum"))

    x = s.clone().requires_grad_(True)
    radi_listwise_loss(x, t, sampling="full", loss=loss, reduction="sum").backward()
    # a step above the rounding of the loss (eps |s|) and far below the gaps: the losses are
    # smooth, and linear to rounding where the gaps are extreme
    fd = _central_difference(f, s, 1e-4 + 1e-7 * float(s.abs().max()))
    torch.testing.assert_close(x.grad, fd, rtol=1e-4, atol=1e-4 * (1 + float(fd.abs().max())))
    assert abs(float(x.grad.sum())) <= 1e-9 * (1 + float(x.grad.abs().max())) or loss.startswith("ndcg")


@PROPS
@given(seed=st.integers(0, 2**16), K=st.integers(2, 6), log_gap=st.floats(0, 12), log_scale=st.floats(-6, 19))
def test_pairwise_gradient_matches_float64_finite_differences(seed, K, log_gap, log_scale):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randperm(K, generator=g).double() * 10.0 ** log_gap + torch.rand(K, generator=g, dtype=torch.float64))
    s = s[None] + 3 * torch.rand(1, K, generator=g, dtype=torch.float64)
    mc = teacher(seed, 1, 3, K, 10.0 ** log_scale, torch.float64)

    def f(x):
        return float(radi_pairwise_loss(x, mc, backend="torch"))

    x = s.clone().requires_grad_(True)
    radi_pairwise_loss(x, mc, backend="torch").backward()
    fd = _central_difference(f, s, 1e-7 * max(1.0, float(s.abs().max())) if log_gap < 6 else 1e-3)
    # a hinge exactly at its kink has no derivative: skip those rare draws
    hypothesis.assume(bool(((x.grad - fd).abs() <= 1e-6 * (1 + float(fd.abs().max()))).all())
                      or float(fd.abs().max()) > 1)
    torch.testing.assert_close(x.grad, fd, rtol=1e-6, atol=1e-6)


def test_row5_listmle_gradient_exact_at_any_gap():
    for M, dtype in ((1e6, torch.float32), (1e10, torch.float32), (1e20, torch.float64)):
        s = torch.tensor([[0.0, M]], dtype=dtype, requires_grad=True)
        radi_listwise_loss(s, torch.tensor([[1.0, 0]], dtype=dtype), sampling="full", loss="listmle").backward()
        assert s.grad.tolist() == [[-1.0, 1.0]]


def test_row6_ranknet_in_half_precision_is_computed_in_fp32():
    torch.manual_seed(0)
    s = (torch.randn(1, 17) * 1000).half()
    t = torch.randn(1, 17).half()
    got = radi_listwise_loss(s, t, sampling="full", loss="ranknet")
    ref = radi_listwise_loss(s.float(), t.float(), sampling="full", loss="ranknet")
    assert got.dtype == torch.float32 and math.isfinite(float(got))
    assert float(got) == pytest.approx(float(ref), rel=1e-6)


# ----------------------------------------------------------------------------- empty batches (row 7)
def _empty_cases(B, N):
    s, t = torch.randn(B, N), torch.randn(B, N)
    mc = torch.randn(B, 3, N)
    cases = {"radi_pairwise_torch": lambda r: radi_pairwise_loss(s, mc, reduction=r, backend="torch"),
             "radi_listwise": lambda r: radi_listwise_loss(s, t, hot=2, cold=1, reduction=r)}
    if _triton_available():
        cases["radi_pairwise_triton"] = lambda r: radi_pairwise_loss(s, mc, reduction=r, backend="triton")
    return cases


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_loss_and_metric_on_an_empty_batch(reduction):
    for name, fn in _empty_cases(0, 5).items():
        out = fn(reduction)
        assert out.shape == ((0,) if reduction == "none" else ()), name
        assert reduction == "none" or float(out) == 0.0, name
    targets = torch.zeros(0, 5)
    outputs = {"classification": classification_loss(torch.randn(0, 5), targets, reduction)}
    if reduction != "sum":  # the metrics reduce by "mean" or "none"
        outputs.update({"acc_at_1": acc_at_1(torch.randn(0, 5), targets, reduction=reduction),
                        "hit_at_k": hit_at_k(torch.randn(0, 5), targets, reduction=reduction),
                        "ndcg_at_k": ndcg_at_k(torch.randn(0, 5), targets, reduction=reduction),
                        "ivqa": ivqa_accuracy(torch.randn(0, 5), targets, reduction=reduction)})
    for name, out in outputs.items():
        assert out.shape == ((0,) if reduction == "none" else ()), name
        assert reduction == "none" or float(out) == 0.0, name
    assert pairwise_uncertainty(torch.randn(0, 3, 4)).shape == (0, 4, 4)
    assert sinkhorn_margin_weights(torch.randn(0, 3, 4)).shape == (0, 4, 4)


def test_every_loss_and_metric_on_rows_without_answers():
    for name, fn in _empty_cases(3, 0).items():
        assert fn("none").tolist() == [0.0, 0.0, 0.0], name
        assert float(fn("mean")) == 0.0, name
    for fn in (lambda: classification_loss(torch.randn(3, 0), torch.zeros(3, 0)),
               lambda: acc_at_1(torch.randn(3, 0), torch.zeros(3, 0)),
               lambda: ivqa_accuracy(torch.randn(3, 0), torch.zeros(3, 0))):
        with pytest.raises(ValueError):
            fn()


# ----------------------------------------------------------------------------- arguments (rows 8-9)
@pytest.mark.parametrize("kwargs", [dict(margin="1"), dict(margin=True), dict(lam=True), dict(lam="0.5"),
                                    dict(margin=float("nan")), dict(lam=0.0), dict(lam=-1.0),
                                    dict(margin_mode="random", generator=3), dict(top_k=2.5)])
def test_pairwise_rejects_illegal_argument_types(kwargs):
    with pytest.raises(ValueError):
        radi_pairwise_loss(torch.randn(2, 4), torch.randn(2, 3, 4), backend="torch", **kwargs)


@pytest.mark.parametrize("kwargs", [dict(top_k=0), dict(margin=-1), dict(backend="cuda"), dict(lam=True),
                                    dict(margin="1")])
def test_pairwise_module_rejects_bad_settings_at_construction(kwargs):
    with pytest.raises(ValueError):
        RadiPairwiseLoss(**kwargs)


def test_listwise_rejects_an_integer_generator():
    with pytest.raises(ValueError, match="generator"):
        radi_listwise_loss(torch.randn(2, 5), torch.randn(2, 5), hot=2, cold=1, generator=3)


def test_classification_weights_whose_sum_overflows_stay_finite():
    out = classification_loss(torch.randn(2, 5), torch.full((2, 5), 1e38))
    assert math.isfinite(float(out))


# ----------------------------------------------------------------------------- the sampler (row 10)
@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(alpha=st.floats(1e300, 1.7e308), n=st.integers(7, 40), hot=st.integers(0, 3),
       scheme=st.sampled_from(["exp", "zipf"]))
def test_a_law_that_overflows_gives_the_deterministic_top_ranks(alpha, n, hot, scheme):
    from radi_fast.sampling import rank_log_weights, sample_partial_list
    from radi_fast.ops.sampler import compiled_available

    assert torch.isfinite(rank_log_weights(n, scheme, alpha)).all()
    scores = torch.arange(n, 0, -1, dtype=torch.float32)[None].expand(2, n)
    backends = ["torch"] + (["compiled"] if compiled_available() else [])
    for backend in backends:
        out = sample_partial_list(scores, hot, 4, scheme, alpha, torch.Generator().manual_seed(1), backend=backend)
        assert out.tolist() == [list(range(hot + 4))] * 2, backend
