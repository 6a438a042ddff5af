"""RADI-P: the CPU path against the literal reference, hand cases, properties and bad input."""
import math

import pytest
import torch

import radi_fast
from radi_fast import reference as R
from radi_fast._random import draw_seed
from radi_fast.pairwise import MARGIN_MODES

from conftest import make_mc


def both(student, mc, teacher=None, lengths=None, seed=7, **kw):
    """(fast loss, fast grad, reference loss, reference grad) on the same inputs."""
    s1 = student.detach().clone().requires_grad_(True)
    s2 = student.detach().clone().requires_grad_(True)
    fast = radi_fast.radi_pairwise_loss(s1, mc, teacher, generator=torch.Generator().manual_seed(seed),
                                        lengths=lengths, backend="torch", **kw)
    # distinct weights per sample so reduction="none" checks every sample's gradient
    weights = torch.linspace(0.5, 1.5, fast.numel(), dtype=fast.dtype).reshape(fast.shape)
    (g1,) = torch.autograd.grad((fast * weights).sum(), s1)
    ref = R.radi_pairwise_loss_literal(s2, mc, teacher, seed=draw_seed(torch.Generator().manual_seed(seed)),
                                       lengths=lengths, **kw)
    (g2,) = torch.autograd.grad((ref * weights).sum(), s2)
    return fast, g1, ref, g2


# ----------------------------------------------------------------------------- hand cases
def test_uncertainty_by_hand():
    # T = 2 passes, K = 3 answers. D^k_ij = p^k_i - p^k_j; U = population variance over k.
    mc = torch.tensor([[[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]]], dtype=torch.float64)
    # answer 0 moves by 2 between passes, 1 and 2 are fixed: Var(D_01) = Var(D_02) = 1, Var(D_12) = 0
    expected = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(radi_fast.pairwise_uncertainty(mc)[0], expected)
    torch.testing.assert_close(R.pairwise_uncertainty_literal(mc[0]), expected)


def test_uniform_hinge_by_hand():
    # Teacher order 0 > 1 > 2 (mean of the MC passes); student scores [1, 0.5, 0.8]; m = 1.
    mc = torch.tensor([[[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]], dtype=torch.float64)
    s = torch.tensor([[1.0, 0.5, 0.8]], dtype=torch.float64, requires_grad=True)
    # pairs (0,1): 1-0.5=0.5 -> hinge 0.5; (0,2): 0.2 -> 0.8; (1,2): -0.3 -> 1.3; mean over 3 pairs
    loss = radi_fast.radi_pairwise_loss(s, mc, margin=1.0, margin_mode="uniform")
    assert loss.item() == pytest.approx((0.5 + 0.8 + 1.3) / 3)
    loss.backward()
    # dL/ds_0 = -2/3 (winner twice), dL/ds_1 = (+1 - 1)/3 = 0, dL/ds_2 = +2/3
    torch.testing.assert_close(s.grad, torch.tensor([[-2 / 3, 0.0, 2 / 3]], dtype=torch.float64))


def test_sinkhorn_k3_by_hand():
    # For K = 3 the off-diagonal doubly stochastic W with W = diag(u) E diag(v), E symmetric,
    # u = v, has W_ij = (E_ij u_i u_j); check the closed form for equal uncertainties: W = 1/2 off-diagonal.
    mc = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 2.0], [0.0, 0.0, 3.0], [1.0, 1.0, 3.0]]], dtype=torch.float64)
    U = radi_fast.pairwise_uncertainty(mc)[0]
    W = radi_fast.sinkhorn_margin_weights(mc, lam=1.0, max_iter=500, tol=0)[0]
    torch.testing.assert_close(W.sum(0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(W.sum(1), torch.ones(3, dtype=torch.float64))
    # A symmetric doubly stochastic 3x3 with zero diagonal is determined by its row sums:
    # W01 + W02 = 1, W01 + W12 = 1, W02 + W12 = 1 -> all 1/2, whatever U is.
    torch.testing.assert_close(W, 0.5 * (1 - torch.eye(3, dtype=torch.float64)))
    assert U[0, 1] > 0 and U[0, 2] > 0


# ----------------------------------------------------------------------------- fast == literal
SHAPES = [(1, 2, 1), (1, 2, 2), (3, 5, 37), (2, 16, 130), (1, 3, 257)]


@pytest.mark.parametrize("B,T,N", SHAPES)
@pytest.mark.parametrize("mode", MARGIN_MODES)
def test_cpu_path_matches_reference(B, T, N, mode):
    mc = make_mc(B, T, N, seed=N)
    student = torch.randn(B, N, dtype=torch.float64)
    fast, g1, ref, g2 = both(student, mc, margin=1.0, margin_mode=mode, top_k=2500, max_iter=25, tol=0.0)
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("top_k,margin,lam,tol", [(10, 0.1, "auto", 1e-5), (36, 10.0, 0.05, 0.0),
                                                  (5, 1.0, 3.0, 1e-9), (2500, 1.0, "auto", 1e-3)])
@pytest.mark.parametrize("explicit_teacher", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cpu_path_matches_reference_options(top_k, margin, lam, tol, explicit_teacher, reduction):
    B, T, N = 3, 4, 37
    mc = make_mc(B, T, N, seed=3)
    teacher = torch.randn(B, N, dtype=torch.float64) if explicit_teacher else None
    student = torch.randn(B, N, dtype=torch.float64)
    fast, g1, ref, g2 = both(student, mc, teacher, margin=margin, margin_mode="ot", lam=lam, top_k=top_k,
                             max_iter=60, tol=tol, reduction=reduction)
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("mode", MARGIN_MODES)
def test_cpu_path_matches_reference_ragged(mode):
    B, T, N = 4, 3, 40
    mc = make_mc(B, T, N, seed=11)
    lengths = torch.tensor([40, 1, 17, 2])
    student = torch.randn(B, N, dtype=torch.float64)
    fast, g1, ref, g2 = both(student, mc, lengths=lengths, margin_mode=mode, top_k=12, max_iter=20, tol=0.0,
                             reduction="none")
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-12)
    assert fast[1] == 0  # one valid answer: no pair
    assert g1[:, 17:][2].abs().sum() == 0 and g1[3, 2:].abs().sum() == 0  # padding gets no gradient


def test_small_lam_log_domain_matches_reference():
    # lam a tenth of mean U: the plain-domain guard switches to the log domain; reference in fp64 still fine.
    mc = make_mc(2, 6, 30, seed=5, scale=2.0)
    U = radi_fast.pairwise_uncertainty(mc)
    lam = float(U.sum() / (2 * 30 * 29)) / 10
    student = torch.randn(2, 30, dtype=torch.float64)
    fast, g1, ref, g2 = both(student, mc, margin=1.0, lam=lam, max_iter=50, tol=0.0)
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-12)


def test_tiny_lam_does_not_underflow():
    # max U / lam is about 1e4 here: exp(-U/lam) underflows even in fp64, so the plain-domain
    # Algorithm 1 divides by 0; the log domain stays finite and converges (slowly, as expected).
    mc = make_mc(1, 5, 20, seed=2, scale=3.0)
    W = radi_fast.sinkhorn_margin_weights(mc, lam=1e-3, max_iter=3000, tol=1e-10)
    assert torch.isfinite(W).all()
    ones = torch.ones(1, 20, dtype=torch.float64)
    torch.testing.assert_close(W.sum(1), ones, rtol=1e-9, atol=1e-9)  # exact after the last half-step
    torch.testing.assert_close(W.sum(2), ones, rtol=0, atol=1e-3)
    with torch.no_grad():
        literal = R.sinkhorn_literal(radi_fast.pairwise_uncertainty(mc)[0], lam=1e-3, max_iter=5, tol=0)
    assert not torch.isfinite(literal).all()  # the hazard the log domain exists for


def test_dense_weights_match_literal_sinkhorn():
    mc = make_mc(2, 5, 23, seed=9)
    for lam in ("auto", 0.7):
        W = radi_fast.sinkhorn_margin_weights(mc, lam=lam, max_iter=40, tol=0)
        for b in range(2):
            U = R.pairwise_uncertainty_literal(mc[b])
            lam_b = R.auto_lam_literal(U) if lam == "auto" else lam
            torch.testing.assert_close(W[b], R.sinkhorn_literal(U, lam_b, max_iter=40, tol=0), rtol=1e-6, atol=1e-12)


def test_gradcheck_float64():
    mc = make_mc(2, 4, 9, seed=1)
    s = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    for mode in MARGIN_MODES:
        fn = lambda x: radi_fast.radi_pairwise_loss(x, mc, margin=0.3, margin_mode=mode, max_iter=10, tol=0,
                                                    generator=torch.Generator().manual_seed(0))
        assert torch.autograd.gradcheck(fn, (s,), eps=1e-7, atol=1e-6)


# ----------------------------------------------------------------------------- properties
def test_weights_doubly_stochastic_and_mean_margin():
    mc = make_mc(3, 10, 64, seed=4)
    W = radi_fast.sinkhorn_margin_weights(mc, max_iter=500, tol=1e-12)
    ones = torch.ones(3, 64, dtype=torch.float64)
    torch.testing.assert_close(W.sum(1), ones, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(W.sum(2), ones, rtol=1e-9, atol=1e-9)
    assert torch.all(W.diagonal(dim1=1, dim2=2) == 0)
    # average off-diagonal margin = m / (K - 1)
    assert float(W.sum() / (3 * 64 * 63)) == pytest.approx(1 / 63)


def test_loss_invariant_to_teacher_shift():
    mc = make_mc(2, 5, 50, seed=8)
    s = torch.randn(2, 50, dtype=torch.float64)
    for mode in MARGIN_MODES:
        a = radi_fast.radi_pairwise_loss(s, mc, margin_mode=mode, generator=torch.Generator().manual_seed(1))
        b = radi_fast.radi_pairwise_loss(s, mc + 3.25, margin_mode=mode, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_all_tied_teacher_gives_zero_not_nan():
    mc = torch.ones(2, 4, 10, dtype=torch.float64)  # no uncertainty at all, all scores tied
    s = torch.randn(2, 10, dtype=torch.float64, requires_grad=True)
    for mode in MARGIN_MODES:
        loss = radi_fast.radi_pairwise_loss(s, mc, margin_mode=mode)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(s.grad).all()
        s.grad = None


def test_k1_and_zero_uncertainty_are_defined():
    s = torch.randn(3, 1, requires_grad=True)
    assert radi_fast.radi_pairwise_loss(s, torch.randn(3, 4, 1)).item() == 0.0
    # identical MC passes: U = 0, "auto" lam falls back to 1, W uniform 1/(K-1)
    mc = torch.randn(1, 1, 6).repeat(1, 3, 1)
    W = radi_fast.sinkhorn_margin_weights(mc)
    torch.testing.assert_close(W[0], (1 - torch.eye(6)) / 5)


def test_module_matches_functional_and_low_precision_inputs():
    mc = make_mc(2, 5, 40, dtype=torch.float32, seed=6)
    s = torch.randn(2, 40)
    module = radi_fast.RadiPairwiseLoss(margin=0.5, top_k=20)
    torch.testing.assert_close(module(s, mc), radi_fast.radi_pairwise_loss(s, mc, margin=0.5, top_k=20))
    for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float16, 1e-2)):
        s_lp = s.to(dtype).requires_grad_(True)
        out = radi_fast.radi_pairwise_loss(s_lp, mc.to(dtype), margin=0.5, top_k=20)
        out.backward()
        assert out.dtype == torch.float32 and s_lp.grad.dtype == dtype
        ref = R.radi_pairwise_loss_literal(s_lp.detach().double(), mc.to(dtype).double(), margin=0.5, top_k=20)
        assert out.item() == pytest.approx(ref.item(), rel=tol)


def test_scaling_case_memory_is_bounded():
    """B = 32, T = 10, K = 2500: record every op's output and the largest tensor the path makes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.biggest = max(self.biggest, t.numel() * t.element_size())
            return out

    B, T, K = 32, 10, 2500
    mc = torch.randn(B, T, K)
    s = torch.randn(B, K, requires_grad=True)
    with Largest() as mode:
        loss = radi_fast.radi_pairwise_loss(s, mc, max_iter=5)
        loss.backward()
    assert math.isfinite(loss.item())
    # never the [B, T, K, K] tensor (8 GB) nor a [B, K, K] one (800 MB): at most one 32 MB block
    assert mode.biggest <= 4 * radi_fast.ops.pairwise_cpu.CPU_BLOCK_ELEMENTS, mode.biggest


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    mc = torch.randn(2, 4, 10)
    s = torch.randn(2, 10)
    f = radi_fast.radi_pairwise_loss
    with pytest.raises(ValueError, match="student_logits"):
        f(torch.randn(2, 11), mc)
    with pytest.raises(ValueError, match="student_logits"):
        f(torch.randn(3, 10), mc)
    with pytest.raises(ValueError, match="teacher_mc_logits"):
        f(s, torch.randn(2, 10))
    with pytest.raises(ValueError, match="T >= 2"):
        f(s, torch.randn(2, 1, 10))
    with pytest.raises(ValueError, match="non-finite"):
        f(s, mc.clone().index_put_((torch.tensor(0), torch.tensor(0), torch.tensor(0)), torch.tensor(float("nan"))))
    with pytest.raises(ValueError, match="student_logits contains non-finite"):
        f(torch.full((2, 10), float("inf")), mc)
    with pytest.raises(ValueError, match="lam"):
        f(s, mc, lam=0.0)
    with pytest.raises(ValueError, match="lam"):
        f(s, mc, lam=-1.0)
    with pytest.raises(ValueError, match="lam"):
        f(s, mc, lam="mean")
    with pytest.raises(ValueError, match="margin_mode"):
        f(s, mc, margin_mode="soft")
    with pytest.raises(ValueError, match="margin"):
        f(s, mc, margin=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        f(s, mc, top_k=0)
    with pytest.raises(ValueError, match="max_iter"):
        f(s, mc, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        f(s, mc, tol=-1e-3)
    with pytest.raises(ValueError, match="reduction"):
        f(s, mc, reduction="avg")
    with pytest.raises(ValueError, match="teacher_logits"):
        f(s, mc, torch.randn(2, 9))
    with pytest.raises(ValueError, match="lengths"):
        f(s, mc, lengths=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="backend"):
        f(s, mc, backend="cuda")
    with pytest.raises(ValueError, match="mc_logits"):
        radi_fast.pairwise_uncertainty(torch.randn(4, 10))


def test_classification_loss_matches_eq2():
    logits = torch.randn(4, 12, dtype=torch.float64)
    targets = torch.zeros(4, 12)
    targets[0, [1, 3]] = 1
    targets[1, 0] = 1
    targets[2, [2, 5, 7]] = 1
    targets[3, 11] = 1
    torch.testing.assert_close(radi_fast.classification_loss(logits, targets), R.classification_loss_literal(logits, targets))
    single = torch.tensor([1, 0, 2, 11])
    torch.testing.assert_close(radi_fast.classification_loss(logits, single),
                               torch.nn.functional.cross_entropy(logits, single))
    # iVQA-style weights: min(1, count/2)
    w = torch.zeros(1, 3)
    w[0, 0], w[0, 1] = 1.0, 0.5
    lp = torch.log_softmax(logits[:1, :3], -1)
    torch.testing.assert_close(radi_fast.classification_loss(logits[:1, :3], w), -(lp[0, 0] + 0.5 * lp[0, 1]) / 1.5)
    with pytest.raises(ValueError, match="targets"):
        radi_fast.classification_loss(logits, torch.zeros(4, 12))
    with pytest.raises(ValueError, match="targets"):
        radi_fast.classification_loss(logits, torch.zeros(4, 11))
    with pytest.raises(ValueError, match="logits"):
        radi_fast.classification_loss(torch.full((4, 12), float("nan")), targets)
