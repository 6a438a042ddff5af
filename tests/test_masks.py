"""Masks of valid answers: ``mask`` ([B, N] bool, any positions) beside ``lengths``.

For RADI-P (both backends: CPU and the Triton interpreter), RADI-L, the classification loss and
the metrics: masked inputs give the same loss and gradient as the truncated inputs (each row's
valid answers moved to the front, the rest cut off by ``lengths``), against the literal
references too; masked entries may hold NaN/inf and get exactly 0 gradient; RADI-L rows with
fewer valid answers than hot + cold use what they have, without touching the other rows.
"""
from __future__ import annotations

import pytest
import torch

import radi_fast
from radi_fast import metrics
from radi_fast import reference as R
from radi_fast._backend import triton_available
from radi_fast._random import draw_seed
from radi_fast.pairwise import MARGIN_MODES
from radi_fast.reference_listwise import radi_listwise_loss_literal

from conftest import make_mc

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="no triton"))]
LISTWISE_LOSSES = ["listmle", "listnet", "stlistnet", "ranknet", "ndcg_loss1", "ndcg_loss2", "ndcg_loss2pp"]


def make_mask(B, N, seed, p=0.7, empty_row=None, one_row=None):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, N, generator=g) < p
    mask[:, 0] = True
    if one_row is not None:  # exactly one valid answer
        mask[one_row] = False
        mask[one_row, N // 2] = True
    if empty_row is not None:
        mask[empty_row] = False
    return mask


def poison(x, mask, *values):
    """``x`` with NaN / inf / -inf (cycling) on the masked answers (mask broadcast over dim 1 of
    a [B, T, N] tensor)."""
    values = values or (float("nan"), float("inf"), float("-inf"))
    m = mask if x.dim() == 2 else mask[:, None, :].expand_as(x)
    fill = torch.tensor(values, dtype=x.dtype).repeat(m.numel() // len(values) + 1)[: m.numel()].view(m.shape)
    return torch.where(m, x, fill.to(x.device))


def compact(mask):
    """Per row, the column permutation that puts the valid answers first (in column order), and
    the number of valid answers."""
    perm = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    return perm, mask.sum(dim=1)


def gather_last(x, perm):
    return x.gather(-1, perm if x.dim() == 2 else perm[:, None, :].expand_as(x))


def grad_of(fn, x, weights=None):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    w = torch.ones_like(out) if weights is None else weights.to(out.dtype)
    (g,) = torch.autograd.grad((out * w).sum(), x)
    return out.detach(), g


# ----------------------------------------------------------------------------- RADI-P
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MARGIN_MODES)
def test_radi_p_mask_against_the_literal_reference(backend, mode):
    B, T, N = 4, 5, 37
    mc = make_mc(B, T, N, seed=3)
    student = torch.randn(B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    mask = make_mask(B, N, 5, one_row=2, empty_row=3)
    lengths = torch.tensor([37, 30, 37, 37])
    weights = torch.linspace(0.5, 1.5, B, dtype=torch.float64)
    kw = dict(margin=0.7, margin_mode=mode, top_k=20, max_iter=30, tol=0.0, reduction="none")
    for lens in (None, lengths):
        fast, g_fast = grad_of(lambda s: radi_fast.radi_pairwise_loss(
            s, poison(mc, mask), mask=mask, lengths=lens, backend=backend,
            generator=torch.Generator().manual_seed(9), **kw), poison(student, mask), weights)
        ref, g_ref = grad_of(lambda s: R.radi_pairwise_loss_literal(
            s, mc, seed=draw_seed(torch.Generator().manual_seed(9)), mask=mask, lengths=lens, **kw),
            student, weights)
        assert fast.dtype == torch.float64
        torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-12)
        valid = mask if lens is None else mask & (torch.arange(N)[None, :] < lens[:, None])
        assert bool((g_fast[~valid] == 0).all())  # exactly 0, NaN inputs there notwithstanding
        assert fast[2] == 0 and fast[3] == 0  # one valid answer, none: no pair


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["ot", "uniform", "uncertainty"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_radi_p_masked_equals_truncated(backend, mode, dtype):
    B, T, N = 3, 4, 45
    mc = make_mc(B, T, N, seed=7).to(dtype)
    student = torch.randn(B, N, generator=torch.Generator().manual_seed(8)).to(dtype)
    teacher = (mc.mean(1) + 0.05 * torch.randn(B, N, generator=torch.Generator().manual_seed(9)).to(dtype))
    mask = make_mask(B, N, 10)
    perm, lengths = compact(mask)
    kw = dict(margin_mode=mode, max_iter=25, tol=0.0, reduction="none", backend=backend)
    masked, g_masked = grad_of(lambda s: radi_fast.radi_pairwise_loss(
        s, poison(mc, mask), poison(teacher, mask), mask=mask, **kw), poison(student, mask))
    cut, g_cut = grad_of(lambda s: radi_fast.radi_pairwise_loss(
        s, gather_last(mc, perm), gather_last(teacher, perm), lengths=lengths, **kw), student.gather(1, perm))
    rtol, atol = (1e-10, 1e-12) if dtype == torch.float64 else (2e-5, 1e-6)
    torch.testing.assert_close(masked, cut, rtol=rtol, atol=atol)
    g_back = torch.zeros_like(g_cut).scatter_(1, perm, g_cut)
    torch.testing.assert_close(g_masked, g_back, rtol=0, atol=atol)
    assert bool((g_masked[~mask] == 0).all())


def test_radi_p_mask_bad_input():
    s, mc = torch.randn(2, 6), torch.randn(2, 3, 6)
    for bad, match in [(torch.ones(2, 5, dtype=torch.bool), "mask must have shape"),
                       (torch.ones(2, 6), "mask must be a bool"), ([[True] * 6] * 2, "mask must be a torch.Tensor")]:
        with pytest.raises(ValueError, match=match):
            radi_fast.radi_pairwise_loss(s, mc, mask=bad)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 2] = False
    s[1, 2] = float("nan")  # a valid answer: still refused (CPU value checks)
    with pytest.raises(ValueError, match="student_logits"):
        radi_fast.radi_pairwise_loss(s, mc, mask=mask)


# ----------------------------------------------------------------------------- RADI-L
@pytest.mark.parametrize("sampling, alpha", [("zipf", 1.0), ("exp", 0.2), ("random", 1.0), ("full", 1.0)])
@pytest.mark.parametrize("loss", LISTWISE_LOSSES)
@pytest.mark.parametrize("short_row", [False, True])
def test_radi_l_masked_equals_truncated(sampling, alpha, loss, short_row):
    """Without a short row the truncated call draws with the compiled op (CPU lengths, all long
    enough) and the masked one with the PyTorch op: equal lists, equal losses."""
    B, N, hot, cold = 5, 40, 6, 9
    g = torch.Generator().manual_seed(11)
    student = torch.randn(B, N, generator=g, dtype=torch.float64)
    teacher = torch.randn(B, N, generator=g, dtype=torch.float64)
    mask = make_mask(B, N, 12, p=0.6)
    if short_row:
        mask[3] = False
        mask[3, [1, 5, 30]] = True  # 3 valid answers < hot + cold
    perm, lengths = compact(mask)
    kw = dict(hot=hot, cold=cold, sampling=sampling, alpha=alpha, loss=loss, reduction="none")
    masked, g_masked = grad_of(lambda s: radi_fast.radi_listwise_loss(
        s, poison(teacher, mask), generator=torch.Generator().manual_seed(5), mask=mask, **kw), poison(student, mask))
    cut, g_cut = grad_of(lambda s: radi_fast.radi_listwise_loss(
        s, teacher.gather(1, perm), generator=torch.Generator().manual_seed(5), lengths=lengths, **kw),
        student.gather(1, perm))
    assert torch.isfinite(masked).all()
    torch.testing.assert_close(masked, cut, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_masked, torch.zeros_like(g_cut).scatter_(1, perm, g_cut), rtol=1e-12, atol=1e-12)
    assert bool((g_masked[~mask] == 0).all())


@pytest.mark.parametrize("loss", [name for name in LISTWISE_LOSSES if name != "stlistnet"])
def test_radi_l_short_rows_against_the_literal_reference(loss):
    """Each row's loss is the literal loss on the sub-list it can fill (hot first, then cold)."""
    from radi_fast.listwise import draw_sublists

    B, N, hot, cold = 4, 30, 5, 8
    g = torch.Generator().manual_seed(21)
    student = torch.randn(B, N, generator=g, dtype=torch.float64)
    teacher = torch.randn(B, N, generator=g, dtype=torch.float64)
    lengths = torch.tensor([30, 10, 4, 13])  # rows 1 and 2 are short (< 13), row 3 just fits
    ids, used = draw_sublists(teacher, hot, cold, "zipf", 1.0, torch.Generator().manual_seed(3), lengths)
    assert used[0].all() and used[3].all() and used[1].sum() == 10 and used[2].sum() == 4
    sublists = [ids[b][used[b]].tolist() for b in range(B)]
    assert all(max(sub) < int(n) for sub, n in zip(sublists, lengths))
    fast, g_fast = grad_of(lambda s: radi_fast.radi_listwise_loss(
        s, teacher, hot, cold, generator=torch.Generator().manual_seed(3), lengths=lengths, loss=loss,
        reduction="none"), student)
    ref, g_ref = grad_of(lambda s: radi_listwise_loss_literal(s, teacher, sublists, loss, reduction="none"), student)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-12)


def test_radi_l_short_row_does_not_shrink_the_batch():
    B, N = 6, 50
    g = torch.Generator().manual_seed(31)
    student, teacher = torch.randn(B, N, generator=g), torch.randn(B, N, generator=g)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[B - 1, 3:] = False  # the last row has 3 valid answers, hot + cold = 20
    kw = dict(hot=10, cold=10, reduction="none")
    with_short = radi_fast.radi_listwise_loss(student, teacher, generator=torch.Generator().manual_seed(1),
                                              mask=mask, **kw)
    without = radi_fast.radi_listwise_loss(student, teacher, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(with_short[: B - 1], without[: B - 1])  # same lists for the long rows
    assert torch.isfinite(with_short[B - 1])
    # hot + cold > N: every row uses what it has, no error
    assert torch.isfinite(radi_fast.radi_listwise_loss(student, teacher, hot=40, cold=30)).all()


# ----------------------------------------------------------------------------- classification
@pytest.mark.parametrize("targets_kind", ["multi_hot", "index"])
def test_classification_masked_equals_truncated(targets_kind):
    B, N = 4, 20
    g = torch.Generator().manual_seed(41)
    logits = torch.randn(B, N, generator=g, dtype=torch.float64)
    mask = make_mask(B, N, 42)
    perm, lengths = compact(mask)
    if targets_kind == "index":
        targets = torch.zeros(B, dtype=torch.long)  # column 0 is always valid
        cut_targets = torch.zeros(B, dtype=torch.long)  # ... and stays first
    else:
        targets = ((torch.rand(B, N, generator=g) < 0.3) & mask).double()
        targets[:, 0] = 1.0
        cut_targets = targets.gather(1, perm)
        targets = torch.where(mask, targets, torch.full_like(targets, float("nan")))  # ignored there
    masked, g_masked = grad_of(lambda x: radi_fast.classification_loss(x, targets, "none", mask=mask),
                               poison(logits, mask))
    cut, g_cut = grad_of(lambda x: radi_fast.classification_loss(x, cut_targets, "none", lengths=lengths),
                         logits.gather(1, perm))
    torch.testing.assert_close(masked, cut, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_masked, torch.zeros_like(g_cut).scatter_(1, perm, g_cut), rtol=1e-12, atol=1e-12)
    assert bool((g_masked[~mask] == 0).all())
    # against the literal eq. 2 on the valid answers of each row
    if targets_kind == "multi_hot":
        for b in range(B):
            ids = torch.nonzero(mask[b]).flatten()
            ref = R.classification_loss_literal(logits[b:b + 1, ids], cut_targets[b:b + 1, : len(ids)])
            torch.testing.assert_close(masked[b], ref)


def test_classification_mask_checks():
    logits = torch.randn(2, 5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 2] = False
    with pytest.raises(ValueError, match="invalid"):
        radi_fast.classification_loss(logits, torch.tensor([0, 2]), mask=mask)
    targets = torch.zeros(2, 5)
    targets[0, 0] = targets[1, 2] = 1.0  # row 1's only label is masked
    with pytest.raises(ValueError, match="no labelled"):
        radi_fast.classification_loss(logits, targets, mask=mask)


# ----------------------------------------------------------------------------- metrics
def test_metrics_masked_equal_truncated():
    B, N = 6, 25
    g = torch.Generator().manual_seed(51)
    scores = torch.randn(B, N, generator=g)
    mask = make_mask(B, N, 52)
    scores[~mask] = 100.0  # masked answers would win every ranking
    scores[0, ~mask[0]] = float("nan")
    correct = (torch.rand(B, N, generator=g) < 0.2) | (~mask)  # masked "correct" answers never count
    correct[:, 0] = True
    counts = torch.randint(0, 6, (B, N), generator=g)
    perm, lengths = compact(mask)
    for fn, kw in [(metrics.acc_at_1, {}), (metrics.hit_at_k, dict(k=3)), (metrics.ndcg_at_k, dict(k=5))]:
        masked = fn(scores, correct, mask=mask, reduction="none", **kw)
        cut = fn(scores.gather(1, perm), (correct & mask).gather(1, perm), lengths=lengths, reduction="none", **kw)
        torch.testing.assert_close(masked, cut)
    torch.testing.assert_close(metrics.ivqa_accuracy(scores, counts, mask=mask, reduction="none"),
                               metrics.ivqa_accuracy(scores.gather(1, perm), counts.gather(1, perm), lengths=lengths,
                                                     reduction="none"))
    # an invalid -inf never beats a valid -inf
    s = torch.full((1, 4), float("-inf"))
    m = torch.tensor([[False, False, True, True]])
    assert metrics.acc_at_1(s, torch.tensor([[0, 0, 1, 0]]), mask=m) == 1.0
