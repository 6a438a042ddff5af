"""RADI-L listwise losses (sec. 3.3, eqs. 6-9): hand cases, the literal reference, gradients,
properties and argument checks."""
import math
import types

import pytest
import torch

from radi_fast.listwise import (
    LAMBDA_LOSSES,
    LISTWISE_LOSSES,
    RadiListwiseLoss,
    draw_sublists,
    radi_listwise_loss,
    stlistnet_uniforms,
)
from radi_fast.reference_listwise import radi_listwise_loss_literal, teacher_ranking_literal

SAMPLINGS = ("full", "zipf", "exp", "random")
F64 = torch.float64


def gen(seed=1234):
    return torch.Generator().manual_seed(seed)


def literal_on_same_draws(student, teacher, hot, cold, sampling, alpha, loss, beta, seed, lengths=None,
                          sigma=1.0, mu=10.0):
    """The literal reference evaluated on the sub-lists (and STListNet uniforms) that
    ``radi_listwise_loss`` draws from ``gen(seed)`` (the generator's documented consumption order)."""
    g = gen(seed)
    indices, valid = draw_sublists(teacher, hot, cold, sampling, alpha, g, lengths)
    uniforms = stlistnet_uniforms(indices.shape, g, teacher.device) if loss == "stlistnet" else None
    sublists = []
    for b in range(indices.shape[0]):
        keep = indices.shape[1] if valid is None else int(valid[b].sum())
        sublists.append(indices[b, :keep].tolist())
    ref = radi_listwise_loss_literal(student, teacher, sublists, loss, beta=beta, uniforms=uniforms,
                                     sigma=sigma, mu=mu, reduction="none")
    return ref, sublists


# ------------------------------------------------------------------------------------------
# hand-computed n = 3 cases (sampling="full": the sub-list is the whole teacher ranking)
# ------------------------------------------------------------------------------------------
S3 = [1.0, 0.5, -0.3]
T3 = [0.2, 1.5, -1.0]  # teacher order: answer 1, then 0, then 2


def lse(*xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def log2_sigmoid(x):
    return -math.log2(1.0 + math.exp(-x))


def loss3(loss, **kw):
    s = torch.tensor([S3], dtype=F64)
    t = torch.tensor([T3], dtype=F64)
    return float(radi_listwise_loss(s, t, sampling="full", loss=loss, **kw))


def hand_gains():
    """Relevance softmax(t), gains (2^rel - 1)/maxDCG, student positions (s order: 0, 1, 2)."""
    z = sum(math.exp(x) for x in T3)
    rel = [math.exp(x) / z for x in T3]
    g = [2 ** r - 1 for r in rel]
    max_dcg = g[1] / math.log2(2) + g[0] / math.log2(3) + g[2] / math.log2(4)  # ideal order 1, 0, 2
    G = [x / max_dcg for x in g]
    D = {0: math.log2(2), 1: math.log2(3), 2: math.log2(4)}  # answer -> log2(1 + student position)
    return G, D


def test_listmle_hand():
    s0, s1, s2 = S3
    expected = (lse(s1, s0, s2) - s1) + (lse(s0, s2) - s0) + 0.0
    assert loss3("listmle") == pytest.approx(expected, rel=1e-12)


def test_listnet_hand():
    z = sum(math.exp(x) for x in T3)
    expected = -sum(math.exp(T3[i]) / z * (S3[i] - lse(*S3)) for i in range(3))
    assert loss3("listnet") == pytest.approx(expected, rel=1e-12)


def test_stlistnet_hand_noise_on_teacher():
    # "full" draws nothing for the sub-list, so the uniforms are the generator's first [1, 3]
    # draw, matched to the sub-list order = teacher ranking (answers 1, 0, 2).
    u = torch.rand((1, 3), dtype=F64, generator=gen(7))[0].tolist()
    beta = 0.7
    noisy = {a: T3[a] - beta * math.log(-math.log(u[i])) for i, a in enumerate([1, 0, 2])}
    z = sum(math.exp(noisy[a]) for a in range(3))
    expected = -sum(math.exp(noisy[a]) / z * (S3[a] - lse(*S3)) for a in range(3))
    assert loss3("stlistnet", beta=beta, generator=gen(7)) == pytest.approx(expected, rel=1e-12)
    # beta = 0 is ListNet exactly
    assert loss3("stlistnet", beta=0.0, generator=gen(7)) == pytest.approx(loss3("listnet"), rel=1e-12)


@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_ranknet_hand(sigma):
    s0, s1, s2 = S3
    expected = -(log2_sigmoid(sigma * (s1 - s0)) + log2_sigmoid(sigma * (s1 - s2)) + log2_sigmoid(sigma * (s0 - s2)))
    assert loss3("ranknet", sigma=sigma) == pytest.approx(expected, rel=1e-12)


def test_ndcg_losses_hand():
    s0, s1, s2 = S3
    G, D = hand_gains()
    pairs = [(1, 0), (1, 2), (0, 2)]  # t_i > t_j
    pos = {0: 1, 1: 2, 2: 3}

    def delta(k):
        return abs(1 / math.log2(1 + k) - 1 / math.log2(2 + k))

    def ls(i, j):
        return log2_sigmoid(S3[i] - S3[j])

    w1 = {(i, j): G[i] / D[i] for i, j in pairs}
    w2 = {(i, j): delta(abs(pos[i] - pos[j])) * abs(G[i] - G[j]) for i, j in pairs}
    mu = 3.0
    w2pp = {(i, j): mu * w2[i, j] + abs(1 / D[i] - 1 / D[j]) * abs(G[i] - G[j]) for i, j in pairs}
    # spot-check one weight with the numbers written out: pair (0, 2) is two positions apart
    assert w2[0, 2] == pytest.approx((1 / math.log2(3) - 0.5) * abs(G[0] - G[2]))
    for loss, w, kw in [("ndcg_loss1", w1, {}), ("ndcg_loss2", w2, {}), ("ndcg_loss2pp", w2pp, {"mu": mu})]:
        expected = -sum(w[p] * ls(*p) for p in pairs)
        assert loss3(loss, **kw) == pytest.approx(expected, rel=1e-12), loss


# ------------------------------------------------------------------------------------------
# literal reference vs fast path: every loss x sampling on awkward shapes, loss and gradients
# ------------------------------------------------------------------------------------------
SHAPES = [  # (B, N, hot, cold, lengths)
    (1, 1, 0, 1, None),
    (3, 2, 1, 1, None),
    (3, 37, 5, 10, None),
    (1, 130, 100, 10, None),
    (3, 37, 4, 9, [37, 20, 13]),
    (3, 130, 0, 23, [130, 64, 23]),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}N{s[1]}h{s[2]}c{s[3]}{'L' if s[4] else ''}")
@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("loss", LISTWISE_LOSSES)
def test_fast_matches_literal(loss, sampling, shape):
    B, N, hot, cold, lengths = shape
    g = gen(B * 1000 + N)
    student = (torch.randn(B, N, dtype=F64, generator=g) * 2).requires_grad_()
    teacher = torch.randn(B, N, dtype=F64, generator=g) * 3
    lengths = None if lengths is None else torch.tensor(lengths)
    kw = dict(alpha=0.6, beta=0.8, sigma=1.3, mu=4.0)
    fast = radi_listwise_loss(student, teacher, hot, cold, sampling, kw["alpha"], loss, kw["beta"], gen(99),
                              sigma=kw["sigma"], mu=kw["mu"], lengths=lengths, reduction="none")
    (grad_fast,) = torch.autograd.grad(fast.sum(), student)
    ref, sublists = literal_on_same_draws(student, teacher, hot, cold, sampling, kw["alpha"], loss, kw["beta"], 99,
                                          lengths, kw["sigma"], kw["mu"])
    (grad_ref,) = torch.autograd.grad(ref.sum(), student)
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad_fast, grad_ref, rtol=1e-6, atol=1e-9)
    # the sub-lists themselves: the whole ranking ("full") or the ranking's top `hot`
    for b, sub in enumerate(sublists):
        n_valid = N if lengths is None else int(lengths[b])
        ranking = teacher_ranking_literal(teacher[b].tolist(), n_valid)
        if sampling == "full":
            assert sub == ranking
        else:
            assert sub[:hot] == ranking[:hot] and len(set(sub)) == hot + cold
            assert set(sub[hot:]) <= set(ranking[hot:])


@pytest.mark.parametrize("sampling", ["full", "zipf"])
@pytest.mark.parametrize("loss", LISTWISE_LOSSES)
def test_gradcheck(loss, sampling):
    g = gen(5)
    student = torch.randn(2, 7, dtype=F64, generator=g).requires_grad_()
    teacher = torch.randn(2, 7, dtype=F64, generator=g)

    def f(s):  # a fresh generator per call: the same sub-lists and noise every evaluation
        return radi_listwise_loss(s, teacher, 2, 3, sampling, 1.0, loss, 0.5, gen(3), sigma=1.5, mu=2.0,
                                  reduction="sum")

    assert torch.autograd.gradcheck(f, (student,), eps=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampling", ["full", "zipf", "exp"])
@pytest.mark.parametrize("loss", LISTWISE_LOSSES)
def test_teacher_shift_invariance(loss, sampling):
    g = gen(11)
    student = torch.randn(3, 40, dtype=F64, generator=g)
    teacher = torch.randn(3, 40, dtype=F64, generator=g)
    base = radi_listwise_loss(student, teacher, 6, 8, sampling, 0.5, loss, 0.7, gen(2), reduction="none")
    shifted = radi_listwise_loss(student, teacher + 2.5, 6, 8, sampling, 0.5, loss, 0.7, gen(2), reduction="none")
    torch.testing.assert_close(base, shifted, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", LISTWISE_LOSSES)
def test_full_equals_zipf_with_hot_n_cold_0(loss):
    g = gen(12)
    student = torch.randn(4, 25, dtype=F64, generator=g)
    teacher = torch.randn(4, 25, dtype=F64, generator=g)
    full = radi_listwise_loss(student, teacher, 100, 10, "full", 1.0, loss, 1.0, gen(3), reduction="none")
    zipf = radi_listwise_loss(student, teacher, 25, 0, "zipf", 1.0, loss, 1.0, gen(3), reduction="none")
    torch.testing.assert_close(full, zipf, rtol=1e-12, atol=0)


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("loss", LISTWISE_LOSSES)
def test_all_tied_teacher(loss, sampling):
    student = torch.randn(3, 20, dtype=F64, generator=gen(13)).requires_grad_()
    teacher = torch.full((3, 20), 0.25, dtype=F64)
    out = radi_listwise_loss(student, teacher, 4, 6, sampling, 1.0, loss, 1.0, gen(4), reduction="none")
    (grad,) = torch.autograd.grad(out.sum(), student)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    if loss in LAMBDA_LOSSES:  # R_p is empty: no pair to rank
        assert torch.equal(out, torch.zeros(3, dtype=F64)) and torch.equal(grad, torch.zeros_like(grad))
    if loss == "listnet":  # uniform target: logsumexp(s) - mean(s) over the sub-list
        indices, _ = draw_sublists(teacher, 4, 6, sampling, 1.0, gen(4))
        s_sub = student.detach().gather(1, indices)
        torch.testing.assert_close(out, torch.logsumexp(s_sub, 1) - s_sub.mean(1))
    if loss == "listmle":  # Plackett-Luce NLL of the index order (the tie rule), > 0
        ref, _ = literal_on_same_draws(student, teacher, 4, 6, sampling, 1.0, loss, 1.0, 4)
        torch.testing.assert_close(out, ref)
        assert (out > 0).all()


@pytest.mark.parametrize("loss", LISTWISE_LOSSES)
def test_single_answer_and_empty_sublist_give_zero(loss):
    student = torch.randn(2, 1, dtype=F64).requires_grad_()
    teacher = torch.randn(2, 1, dtype=F64)
    for sampling, hot, cold in [("full", 100, 10), ("zipf", 1, 0), ("exp", 0, 1)]:
        out = radi_listwise_loss(student, teacher, hot, cold, sampling, 1.0, loss, 1.0, gen())
        assert out.item() == 0.0
    wide = torch.randn(2, 9, dtype=F64).requires_grad_()
    out = radi_listwise_loss(wide, torch.randn(2, 9, dtype=F64), 0, 0, "zipf", loss=loss)
    out.backward()
    assert out.item() == 0.0 and torch.equal(wide.grad, torch.zeros_like(wide))


@pytest.mark.parametrize("sampling", ["full", "zipf"])
@pytest.mark.parametrize("loss", LISTWISE_LOSSES)
def test_padding_is_never_read(loss, sampling):
    g = gen(14)
    student = torch.randn(3, 16, dtype=F64, generator=g)
    teacher = torch.randn(3, 16, dtype=F64, generator=g)
    lengths = torch.tensor([16, 9, 7])
    padding = torch.arange(16)[None, :] >= lengths[:, None]
    clean = radi_listwise_loss(student, teacher, 2, 5, sampling, 1.0, loss, 1.0, gen(5), lengths=lengths,
                               reduction="none")
    dirty_s = student.masked_fill(padding, float("nan")).requires_grad_()
    dirty_t = teacher.masked_fill(padding, float("inf"))
    out = radi_listwise_loss(dirty_s, dirty_t, 2, 5, sampling, 1.0, loss, 1.0, gen(5), lengths=lengths,
                             reduction="none")
    torch.testing.assert_close(out, clean, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(out.sum(), dirty_s)
    assert torch.isfinite(grad).all() and torch.equal(grad[padding], torch.zeros(int(padding.sum()), dtype=F64))


def test_reductions_module_dtypes_and_frozen_teacher():
    g = gen(15)
    student = torch.randn(4, 30, generator=g).requires_grad_()
    teacher = torch.randn(4, 30, generator=g).requires_grad_()
    per_row = radi_listwise_loss(student, teacher, 5, 5, generator=gen(1), reduction="none")
    assert per_row.shape == (4,) and per_row.dtype == torch.float32
    torch.testing.assert_close(radi_listwise_loss(student, teacher, 5, 5, generator=gen(1)), per_row.mean())
    torch.testing.assert_close(radi_listwise_loss(student, teacher, 5, 5, generator=gen(1), reduction="sum"),
                               per_row.sum())
    module = RadiListwiseLoss(5, 5, "exp", 0.5, "ndcg_loss2pp", sigma=2.0, mu=3.0)
    torch.testing.assert_close(module(student, teacher, gen(2)),
                               radi_listwise_loss(student, teacher, 5, 5, "exp", 0.5, "ndcg_loss2pp",
                                                  generator=gen(2), sigma=2.0, mu=3.0))
    assert "ndcg_loss2pp" in repr(module)
    module(student, teacher, gen(2)).backward()
    assert teacher.grad is None and student.grad is not None
    # fp32 agrees with fp64 on the same draws; bf16 runs and returns fp32 (like torch's losses under autocast)
    f64 = radi_listwise_loss(student.double(), teacher.double(), 5, 5, generator=gen(1), loss="listmle")
    f32 = radi_listwise_loss(student, teacher, 5, 5, generator=gen(1), loss="listmle")
    assert f32.dtype == torch.float32 and abs(f32.item() - f64.item()) < 1e-4 * abs(f64.item())
    bf16 = radi_listwise_loss(student.bfloat16(), teacher.bfloat16(), 5, 5, generator=gen(1), loss="ranknet")
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16)


def test_paper_defaults_run():
    g = gen(16)
    student = torch.randn(2, 500, generator=g).requires_grad_()
    teacher = torch.randn(2, 500, generator=g)
    for loss in LISTWISE_LOSSES:
        out = radi_listwise_loss(student, teacher, loss=loss, generator=gen(1))  # hot 100, cold 10, zipf
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(student.grad).all()


def test_samples_through_the_dispatch(monkeypatch):
    """With a (fake) compiled op available, the loss uses the op's sub-lists."""
    import radi_fast.sampling

    chosen = torch.tensor([[3, 1, 4, 0], [2, 0, 5, 1]])
    calls = []

    def partial_list_op(scores, hot, cold, scheme, alpha, seed, offset, lengths):
        calls.append((hot, cold, scheme, seed, offset))
        return chosen

    fake = types.SimpleNamespace(compiled_available=lambda: True, partial_list_op=partial_list_op)
    monkeypatch.setattr(radi_fast.sampling, "compiled_sampler", fake)
    student = torch.randn(2, 6, dtype=F64)
    teacher = torch.randn(2, 6, dtype=F64)
    out = radi_listwise_loss(student, teacher, 0, 4, "exp", 1.0, "listmle", generator=gen(), reduction="none")
    ref = radi_listwise_loss_literal(student, teacher, chosen.tolist(), "listmle", reduction="none")
    assert len(calls) == 1 and calls[0][:3] == (0, 4, "exp")
    torch.testing.assert_close(out, ref)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
def _call(**overrides):
    args = dict(student_logits=torch.randn(2, 8), teacher_logits=torch.randn(2, 8), hot=3, cold=2)
    args.update(overrides)
    return radi_listwise_loss(**args)


@pytest.mark.parametrize("overrides, match", [
    (dict(student_logits=torch.randn(8)), "student_logits"),
    (dict(teacher_logits=torch.randn(2, 8, 1)), "teacher_logits"),
    (dict(teacher_logits=torch.randn(2, 9)), "teacher_logits"),
    (dict(teacher_logits=torch.randn(3, 8)), "teacher_logits"),
    (dict(student_logits=torch.tensor([[0.0] * 7 + [float("nan")]] * 2)), "student_logits"),
    (dict(teacher_logits=torch.tensor([[0.0] * 7 + [float("inf")]] * 2)), "teacher_logits"),
    (dict(student_logits=torch.zeros(2, 8, dtype=torch.long)), "student_logits"),
    (dict(hot=-1), "hot"),
    (dict(cold=-2), "cold"),
    (dict(hot=1.5), "hot"),
    (dict(lengths=torch.tensor([8, 9])), "lengths"),
    (dict(lengths=torch.tensor([8])), "lengths"),
    (dict(mask=torch.ones(2, 7, dtype=torch.bool)), "mask"),
    (dict(mask=torch.ones(2, 8)), "mask"),
    (dict(sampling="zipfian"), "sampling"),
    (dict(loss="lambdarank"), "loss"),
    (dict(alpha=-0.1), "alpha"),
    (dict(beta=-1.0), "beta"),
    (dict(sigma=0.0), "sigma"),
    (dict(mu=-1.0), "mu"),
    (dict(reduction="avg"), "reduction"),
])
def test_bad_input_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        _call(**overrides)


def test_full_ignores_hot_cold_but_module_checks_options():
    out = _call(hot=100, cold=10, sampling="full")  # hot + cold > N is fine without sampling
    assert torch.isfinite(out)
    with pytest.raises(ValueError, match="loss"):
        RadiListwiseLoss(loss="listwise")
    with pytest.raises(ValueError, match="alpha"):
        RadiListwiseLoss(alpha=-1)
