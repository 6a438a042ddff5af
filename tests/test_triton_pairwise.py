"""RADI-P on the Triton kernels, run by the Triton interpreter on the CPU.

TRITON_INTERPRET is set here, before any kernel module is imported (Triton fixes compiled vs
interpreted when a kernel is decorated; ``radi_fast.ops.pairwise_triton.kernels`` re-imports the
kernel modules if they were imported in the other mode first). Every test compares against the
literal reference of eq. 4-5 and Algorithm 1 in float64.

On a CUDA machine, ``RADI_FAST_TEST_DEVICE=cuda`` runs the same tests on the GPU with the
compiled kernels (``bench/gpu_check.sh`` does); the reference stays on the CPU in float64.

Interpreter shapes are small but awkward: K = 2, 37, 130, 257 (partial tiles, several tiles,
diagonal tiles), T = 2, 5, 16 (T = 16 needs the 32-lane padding), B = 1, 3, ragged lengths
with a K_b = 1 sample, N > top_k.
"""
import inspect
import os
from dataclasses import replace

DEVICE = os.environ.get("RADI_FAST_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

pytest.importorskip("triton")
if DEVICE != "cpu" and not torch.cuda.is_available():
    pytest.skip(f"RADI_FAST_TEST_DEVICE={DEVICE} but CUDA is not available", allow_module_level=True)

import radi_fast  # noqa: E402
from radi_fast import reference as R  # noqa: E402
from radi_fast._random import draw_seed, pair_uniform  # noqa: E402
from radi_fast.ops import pairwise_triton as PT  # noqa: E402
from radi_fast.ops.direct_launch import DirectLaunch  # noqa: E402
from radi_fast.ops.pairwise_cpu import prepare_pairwise, sinkhorn_log_potentials_cpu  # noqa: E402
from radi_fast.ops.triton_config import choose_split  # noqa: E402

# loss: relative + absolute; grad: absolute (entries are integer counts / |R_p|, so a single
# hinge that flipped sign would show up as an error of 1 / |R_p| >> these tolerances)
# on a GPU the Sinkhorn logits come from 3xTF32 products (~2^-22 relative, vs 2^-24 for the
# interpreter's fp32): a looser loss tolerance there
_LOSS32 = (3e-5, 1e-6) if DEVICE == "cpu" else (1e-4, 1e-6)
TOL = {
    torch.float64: dict(loss=(1e-10, 1e-12), grad=1e-12),
    torch.float32: dict(loss=_LOSS32, grad=2e-6),
    torch.bfloat16: dict(loss=_LOSS32, grad=None),  # grad checked at bf16 resolution below
    torch.float16: dict(loss=_LOSS32, grad=None),
}


def make_inputs(B, T, N, dtype=torch.float32, seed=0, explicit_teacher=False):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(B, 1, N, generator=g, dtype=torch.float64) * 2
    mc = mean + torch.randn(B, T, N, generator=g, dtype=torch.float64) * 0.5
    student = torch.randn(B, N, generator=g, dtype=torch.float64)
    teacher = (mean[:, 0] + 0.1 * torch.randn(B, N, generator=g, dtype=torch.float64)) if explicit_teacher else None
    cast = lambda x: None if x is None else x.to(dtype=dtype, device=DEVICE)  # noqa: E731
    return cast(student), cast(mc), cast(teacher)


def run_both(student, mc, teacher=None, lengths=None, seed=11, **kw):
    """(triton loss, triton grad, reference loss, reference grad) with per-sample weights on the
    losses so that every sample's gradient is checked."""
    s1 = student.detach().clone().requires_grad_(True)
    loss = radi_fast.radi_pairwise_loss(s1, mc, teacher, reduction="none", lengths=lengths, backend="triton",
                                        generator=torch.Generator().manual_seed(seed), **kw)
    w = torch.linspace(0.5, 1.5, loss.numel(), dtype=torch.float64)
    (g1,) = torch.autograd.grad((loss.double() * w.to(loss.device)).sum(), s1)
    loss, g1 = loss.cpu(), g1.cpu()
    s2 = student.detach().double().cpu().requires_grad_(True)
    ref_kw = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}  # a mask
    ref = R.radi_pairwise_loss_literal(s2, mc.double().cpu(), None if teacher is None else teacher.double().cpu(),
                                       reduction="none", seed=draw_seed(torch.Generator().manual_seed(seed)),
                                       lengths=lengths, **ref_kw)
    (g2,) = torch.autograd.grad((ref * w).sum(), s2)
    return loss, g1, ref, g2


def check(loss, grad, ref, ref_grad, dtype, student_dtype=None):
    tol = TOL[dtype]
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    rtol, atol = tol["loss"]
    torch.testing.assert_close(loss.double(), ref, rtol=rtol, atol=atol)
    assert grad.dtype == (student_dtype or dtype)
    if tol["grad"] is None:  # gradient rounded to the student's half dtype
        torch.testing.assert_close(grad.double(), ref_grad.to(grad.dtype).double(), rtol=0, atol=1e-7)
    else:
        torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=tol["grad"])


# ----------------------------------------------------------------------------- shapes, modes, dtypes
OT_SHAPES = [(1, 2, 2), (3, 5, 37), (3, 16, 130), (3, 2, 57), (1, 5, 257), (1, 16, 257)]


@pytest.mark.parametrize("B,T,K", OT_SHAPES, ids=[f"B{b}T{t}K{k}" for b, t, k in OT_SHAPES])
def test_ot_fp32_matches_reference(B, T, K):
    student, mc, _ = make_inputs(B, T, K, seed=K + T)
    check(*run_both(student, mc, margin_mode="ot", margin=1.0), torch.float32)


MODE_SHAPES = [(3, 5, 37), (1, 16, 130), (1, 2, 257)]


@pytest.mark.parametrize("mode", ["uniform", "random", "uncertainty"])
@pytest.mark.parametrize("B,T,K", MODE_SHAPES, ids=[f"B{b}T{t}K{k}" for b, t, k in MODE_SHAPES])
def test_other_margin_modes_fp32(mode, B, T, K):
    student, mc, _ = make_inputs(B, T, K, seed=3 * K + T)
    # uncertainty margins are 1 / U: scale the margin down so the hinge is not active everywhere
    margin = 1e-3 if mode == "uncertainty" else 1.0
    check(*run_both(student, mc, margin_mode=mode, margin=margin), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["ot", "random"])
def test_half_inputs_fp32_accumulation(dtype, mode):
    # explicit teacher scores in the half dtype, so both paths rank exactly the same values
    student, mc, teacher = make_inputs(3, 5, 130, dtype=dtype, seed=5, explicit_teacher=True)
    check(*run_both(student, mc, teacher, margin_mode=mode), dtype)


@pytest.mark.parametrize("mode", ["ot", "uncertainty"])
def test_fp64_is_computed_in_fp64(mode):
    student, mc, _ = make_inputs(3, 5, 130, dtype=torch.float64, seed=9)
    check(*run_both(student, mc, margin_mode=mode, margin=1e-3 if mode == "uncertainty" else 1.0), torch.float64)


@pytest.mark.parametrize("mode", ["ot", "random"])
def test_ragged_lengths_and_k1_sample(mode):
    student, mc, _ = make_inputs(3, 5, 130, seed=21)
    lengths = torch.tensor([130, 57, 1])
    loss, grad, ref, ref_grad = run_both(student, mc, lengths=lengths, margin_mode=mode)
    check(loss, grad, ref, ref_grad, torch.float32)
    assert loss[2] == 0 and (grad[2] == 0).all()  # K_b = 1: no ordered pair
    assert (grad[1, 57:] == 0).all()  # padding gets no gradient


def test_top_k_truncation_ties_and_options():
    # N > top_k with ragged lengths; teacher scores rounded so that ties occur (|R_p| excludes them)
    student, mc, teacher = make_inputs(3, 5, 300, seed=4, explicit_teacher=True)
    teacher = torch.round(teacher * 2) / 2
    lengths = torch.tensor([300, 200, 40])
    check(*run_both(student, mc, teacher, lengths=lengths, top_k=57, margin=0.5, lam=0.7, tol=0, max_iter=9),
          torch.float32)


def test_all_tied_teacher_gives_zero():
    student, mc, _ = make_inputs(2, 5, 37, seed=1)
    teacher = torch.zeros(2, 37, device=DEVICE)
    loss, grad, ref, ref_grad = run_both(student, mc, teacher)
    assert (loss == 0).all() and (grad == 0).all() and (ref == 0).all()


# per sample: an ordinary scale, logits near fp32's largest squares, tiny logits, all zero
PREPARE_SCALES = {torch.float32: [1.0, 3e18, 2e-30, 0.0], torch.float64: [1.0, 1e300, 3e-310, 0.0]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("lam", [None, 0.7, 1e-30, 1e300])
def test_preparation_kernel_matches_the_cpu_preparation(dtype, lam):
    # teacher_prepare_kernel does in one launch what prepare_pairwise does in PyTorch: the
    # power-of-two scale (exact: frexp), lam in the caller's and the kernel's units (floored at
    # the largest cost / MAX_COST, capped at the dtype's max), the gathered logits
    _, mc, _ = make_inputs(4, 5, 70, dtype=torch.float64, seed=31)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    scales = PREPARE_SCALES[compute]
    mc = (mc * torch.tensor(scales, dtype=torch.float64, device=DEVICE)[:, None, None]).to(dtype)
    lengths = torch.tensor([70, 41, 70, 1])
    mc[1, :, 41:] = float("nan")  # padding is never read
    mc[2, 3, 11] = float("inf") if lam is not None else mc[2, 3, 11]  # a non-finite sample: scale 1
    cfg = replace(PT.default_config(DEVICE == "cpu", compute), stats_bk=16)
    p = PT.prepare_triton(mc, None, 60, lam, lengths.to(DEVICE), cfg)
    ref = prepare_pairwise(mc, None, 60, lam, lengths.to(DEVICE))
    K = p.order.shape[1]
    assert K == 60 and p.mc.shape == (4, 5, 60)
    torch.testing.assert_close(p.order[p.valid].cpu(), ref.answer_ids[ref.valid].cpu(), rtol=0, atol=0)
    assert torch.equal(p.unit.cpu(), ref.unit.cpu())  # the same power of two
    rtol = 1e-13 if compute == torch.float64 else 2e-6
    # lam in the caller's units: the CPU path does not saturate a fixed lam (inf in fp32 for 1e300)
    big = torch.finfo(compute).max
    torch.testing.assert_close(p.lam.double().cpu(), ref.lam.double().cpu().clamp(max=big), rtol=rtol, atol=0)
    finite = [0, 1, 3] if lam is not None else [0, 1, 2, 3]  # past an inf logit the costs are NaN either way
    torch.testing.assert_close(1.0 / p.lam_k.double().cpu()[finite], ref.inv_scale.double().cpu()[finite],
                               rtol=rtol, atol=0)
    centred = (p.mc - p.mc.mean(dim=1, keepdim=True)) * p.valid[:, None, :]
    points = ref.points.transpose(1, 2)
    torch.testing.assert_close(centred.double().cpu()[finite, :, :points.shape[2]], points.double().cpu()[finite],
                               rtol=rtol, atol=1e-14 if compute == torch.float64 else 2e-7)
    assert (p.mc[~p.valid[:, None, :].expand_as(p.mc)] == 0).all()  # padding: 0, never NaN


@pytest.mark.parametrize("dtype,masked", [(torch.float32, False), (torch.bfloat16, True), (torch.float64, True)])
def test_preparation_kernel_gathers_the_student(dtype, masked):
    # the student's scores in teacher order, as the loss kernel reads them (-inf past K_b): the
    # preparation kernel's gather equals sorted_student's PyTorch gather bit for bit, over blocks
    # of 16, ragged lengths or a mask, a sample of one answer, NaN/inf on padding, a strided view
    student, mc, _ = make_inputs(4, 3, 75, seed=9)
    wide = torch.randn(4, 2 * 75, device=DEVICE).to(dtype)
    student = wide[:, ::2]  # not contiguous
    student[1, 50:] = float("nan")
    student[0, 3] = float("inf") if masked else student[0, 3]
    valid = torch.tensor([75, 50, 75, 1], device=DEVICE)
    if masked:
        valid = torch.rand(4, 75, generator=torch.Generator().manual_seed(2)).to(DEVICE) < 0.7
        valid[1, 50:] = False
        valid[0, 3] = False
        valid[3] = False
        valid[3, 60] = True
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    cfg = replace(PT.default_config(DEVICE == "cpu", compute), stats_bk=16)
    p = PT.prepare_triton(mc.to(dtype), None, 70, None, valid, cfg, student_logits=student)
    assert p.student.dtype == compute and p.student.shape == (4, p.padded)
    expected = PT.sorted_student(student, p)
    assert torch.equal(p.student, expected)
    assert torch.isfinite(p.student[:, :p.order.shape[1]][p.valid]).all()
    assert PT.prepare_triton(mc.to(dtype), None, 70, None, valid, cfg).student is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tie_groups_kernel_matches_searchsorted(dtype):
    # the preparation kernel's running max / min scans (carried across answer blocks of 16)
    # against ops/teacher.py tie_groups (searchsorted): groups longer than a block, groups across
    # block boundaries, -0.0 beside 0.0, ragged lengths, a sample of one answer, padding
    from radi_fast.ops.teacher import teacher_top_k, tie_groups
    _, mc, teacher = make_inputs(4, 3, 90, dtype=dtype, seed=5, explicit_teacher=True)
    teacher = torch.round(teacher * 1.5) / 1.5
    teacher[0, :40] = 0.0
    teacher[0, 40:50] = -0.0
    teacher[2] = 1.0  # one group of every answer
    lengths = torch.tensor([90, 63, 90, 1], device=DEVICE)
    cfg = replace(PT.default_config(DEVICE == "cpu", dtype), stats_bk=16)
    for top_k in (90, 37):
        p = PT.prepare_triton(mc, teacher, top_k, 0.5, lengths, cfg)
        order, valid, n_valid = teacher_top_k(teacher, top_k, lengths, pad_to_top_k=True)
        lo, hi, n_pairs = tie_groups(teacher.gather(1, order), valid, n_valid)
        K = order.shape[1]
        assert torch.equal(p.order[valid], order[valid])
        assert torch.equal(p.tie_lo[:, :K][valid].long(), lo[valid])
        assert torch.equal(p.tie_hi[:, :K][valid].long(), hi[valid])
        assert torch.equal(p.n_pairs, n_pairs)
        assert (p.tie_lo[:, :K][~valid] == n_valid[:, None].expand(-1, K)[~valid]).all()  # padding: K_b
        assert n_pairs[2] == 0 and n_pairs[3] == 0 and n_pairs[0] > 0


def test_small_lam_log_domain():
    # lam at 1/10 of the mean uncertainty: costs U / lam up to ~100, far into the log domain
    student, mc, _ = make_inputs(2, 5, 37, dtype=torch.float64, seed=8)
    U = R.pairwise_uncertainty_literal(mc[0].cpu())
    lam = float(U.sum() / (37 * 36)) / 10
    check(*run_both(student, mc, lam=lam, tol=0, max_iter=25), torch.float64)
    check(*run_both(student.float(), mc.float(), lam=lam, tol=0, max_iter=25), torch.float32)


@pytest.mark.parametrize("symmetric", [0, 1])
def test_online_fallback_of_the_shifted_pass(monkeypatch, symmetric):
    # a narrow window makes the shifted pass (or the symmetric one) reject most row blocks: the
    # online fallback of the update runs (with one or two column shares of row sums to reject)
    # and the result is still exact (fp64)
    for split in (1, 2):
        monkeypatch.setenv("RADI_FAST_TRITON_CONFIG",
                           f"shift_lo_log2=-1,shift_hi_log2=1,sink_bm=16,sink_bn=16,sink_split={split},"
                           f"sink_sym={symmetric},sym_block=16")
        student, mc, _ = make_inputs(2, 5, 37, dtype=torch.float64, seed=8)
        check(*run_both(student, mc, lam=0.3, tol=0, max_iter=5), torch.float64)


@pytest.mark.parametrize("override", ["sink_sym=0,sink_bm=32,sink_bn=16,loss_sym=0,loss_bm=16,loss_bn=32",
                                      "sink_sym=0,sink_bm=16,sink_bn=64,sink_acc=1,loss_sym=0,loss_bm=32,loss_bn=16,"
                                      "check_every=1",
                                      "sink_sym=0,sink_split=3,sink_bm=64,sink_bn=32,stats_bk=16",
                                      "sym_block=32,sym_rows=16,loss_bm=16,loss_bn=32",
                                      "sym_block=16,sink_split=3,check_every=1,loss_bm=32",
                                      "sym_block=32,sym_rows=32,sink_split=2,stats_bk=16"])
def test_tile_shapes_and_kernel_variants(override, monkeypatch):
    # the shifted pass (sink_sym=0): mismatched row/column tiles (several diagonal tiles per row
    # block, or one straddling several row blocks), per-pair accumulation, the column split
    # (shares of 5 column tiles: 2+2+1; of 4: 2+2+0; of 1: 1+0+0); the symmetric pass: moving
    # tiles smaller than a block, blocks shared by three programs (some with no tile), an even
    # and an odd number of blocks per sample (130 / 101 / 2 answers in blocks of 16 and 32);
    # the loss over every ordered pair (loss_sym=0) on mismatched tiles, and over each unordered
    # pair once in blocks of 16 and 32 (9 / 7 / 1 and 5 / 4 / 1 tickets per sample)
    monkeypatch.setenv("RADI_FAST_TRITON_CONFIG", override)
    student, mc, _ = make_inputs(3, 5, 130, seed=13)
    check(*run_both(student, mc, lengths=torch.tensor([130, 101, 2])), torch.float32)


@pytest.mark.parametrize("mode", ["ot", "uniform", "random"])
@pytest.mark.parametrize("loss_sym", [0, 1])
def test_loss_kernels_over_ties_blocks_and_empty_rows(mode, loss_sym, monkeypatch):
    # both eq. 4 kernels against the reference where the symmetric one has the most to get
    # wrong: blocks of 16 (one program per stationary block; the last of a sample writes its
    # loss and gradient), tie groups of the teacher that straddle blocks (moving tiles checked
    # pair by pair past the diagonal one), ragged lengths ending mid-block, a sample of one
    # answer and one with none (a mask row of False: loss 0, no program lands its ticket)
    monkeypatch.setenv("RADI_FAST_TRITON_CONFIG", f"loss_sym={loss_sym},loss_bm=16,loss_bn=32")
    assert PT.symmetric_loss(PT.default_config(DEVICE == "cpu", torch.float32), mode) == bool(loss_sym)
    student, mc, teacher = make_inputs(5, 4, 90, seed=17, explicit_teacher=True)
    teacher = torch.round(teacher)  # ties: about 9 values over 90 answers
    mask = torch.ones(5, 90, dtype=torch.bool, device=DEVICE)
    mask[1, 41:] = False
    mask[2, 1:] = False
    mask[3] = False
    mask[4, ::3] = False
    kw = dict(margin_mode=mode, margin=0.5, mask=mask, top_k=80)
    loss, grad, ref, ref_grad = run_both(student, mc, teacher, **kw)
    check(loss, grad, ref, ref_grad, torch.float32)
    assert loss[2] == 0 and loss[3] == 0 and (grad[2:4] == 0).all()
    assert (grad[:, ~mask.any(0).cpu()] == 0).all()
    again = run_both(student, mc, teacher, **kw)  # integer counts, sums in a fixed order: the same bits
    assert torch.equal(again[0], loss) and torch.equal(again[1], grad)


@pytest.mark.parametrize("mode", ["ot", "uniform", "random"])
def test_symmetric_loss_kernel_gives_the_ordered_kernels_gradient(mode, monkeypatch):
    # each gradient entry is an integer count times 1 / |R_p|, so the two kernels agree bit for
    # bit unless a hinge sits within rounding of 0 ("ot": W from a differently ordered product);
    # the losses are the same hinges summed in another order
    student, mc, _ = make_inputs(3, 5, 100, seed=29)
    out = {}
    for loss_sym in (0, 1):
        monkeypatch.setenv("RADI_FAST_TRITON_CONFIG", f"loss_sym={loss_sym},loss_bm=32,loss_bn=16")
        s = student.detach().clone().requires_grad_(True)
        loss = radi_fast.radi_pairwise_loss(s, mc, reduction="none", margin_mode=mode, backend="triton",
                                            generator=torch.Generator().manual_seed(3))
        (g,) = torch.autograd.grad(loss.sum(), s)
        out[loss_sym] = (loss.detach().cpu(), g.cpu())
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-6, atol=0)
    assert torch.equal(out[1][1], out[0][1])


# ----------------------------------------------------------------------------- Sinkhorn and the hash
def test_sinkhorn_potentials_and_per_sample_freezing_match_cpu():
    # samples with different scales converge in different numbers of iterations; the device-side
    # freezing must reproduce the CPU path's per-sample stop exactly (fp64: tight tolerance)
    _, mc, _ = make_inputs(3, 16, 130, dtype=torch.float64, seed=2)
    mc = mc * torch.tensor([1.0, 5.0, 0.2], dtype=torch.float64, device=mc.device)[:, None, None]
    lengths = torch.tensor([130, 90, 3])
    p = prepare_pairwise(mc.cpu(), None, 2500, None, lengths)
    sol = sinkhorn_log_potentials_cpu(p, 100, 1e-5, slice(None))
    f_cpu, g_cpu = (sol.f, sol.g) if hasattr(sol, "f") else sol
    for every in (1, 4):
        cfg = PT.default_config(DEVICE == "cpu", torch.float64)
        cfg = replace(cfg, check_every=every)
        f, g, order, launched, _ = PT.sinkhorn_log_potentials_triton(mc, None, None, 2500, 100, 1e-5, lengths, cfg)
        f, g, order = f.cpu(), g.cpu(), order.cpu()
        assert torch.equal(order, p.answer_ids)
        valid = p.valid
        torch.testing.assert_close(f[valid], f_cpu[valid], rtol=0, atol=1e-10)
        torch.testing.assert_close(g[valid], g_cpu[valid], rtol=0, atol=1e-10)
        assert launched < 100


@pytest.mark.parametrize("override,lam,max_iter", [
    (dict(sym_block=16), None, 60), (dict(sym_block=32, sym_rows=16, sink_split=2), None, 60),
    (dict(sym_block=16, sink_split=3, check_every=1), None, 60), (dict(sym_block=16, sym_spread=0), None, 60),
    (dict(sym_block=16), 0.002, 12), (dict(sym_block=32, sym_rows=16, sink_split=3), 0.002, 12)])
def test_symmetric_half_step_matches_cpu(override, lam, max_iter):
    # each unordered pair exponentiated once, its sum added to both answers' rows: the potentials
    # are Algorithm 1's (fp64, 1e-10) for every schedule: 9, 6, 1 and 4 blocks of 16 answers (odd,
    # even, one), blocks shared by two or three programs (some with no tile), moving tiles of half
    # a block. lam = 0.002 spreads F - G wider than sym_spread on some samples for many
    # iterations (they take the shifted pass) and not on others; sym_spread = 0 takes the shifted
    # pass in every half-step after the first
    _, mc, _ = make_inputs(4, 16, 130, dtype=torch.float64, seed=2)
    mc = mc * torch.tensor([1.0, 5.0, 0.2, 1.0], dtype=torch.float64, device=mc.device)[:, None, None]
    lengths = torch.tensor([130, 90, 3, 64])
    p = prepare_pairwise(mc.cpu(), None, 2500, lam, lengths)
    sol = sinkhorn_log_potentials_cpu(p, max_iter, 1e-5, slice(None))
    f_cpu, g_cpu = sol.f, sol.g
    cfg = replace(PT.default_config(DEVICE == "cpu", torch.float64), **override)
    assert cfg.sink_sym
    f, g, order, launched, iterations = PT.sinkhorn_log_potentials_triton(mc, None, lam, 2500, max_iter, 1e-5, lengths,
                                                                          cfg)
    f, g, order = f.cpu(), g.cpu(), order.cpu()
    assert torch.equal(order, p.answer_ids)
    valid = p.valid
    torch.testing.assert_close(f[valid], f_cpu[valid], rtol=0, atol=1e-10)
    torch.testing.assert_close(g[valid], g_cpu[valid], rtol=0, atol=1e-10)
    assert torch.equal(iterations.cpu(), sol.iterations.cpu())


SYM_SPREAD = PT.default_config(DEVICE == "cpu", torch.float64).sym_spread


def shifted_and_symmetric(monkeypatch, mc, lam, max_iter, tol, scheme):
    """The scheme's (F, G, launched, iterations) with the shifted and with the symmetric pass
    (fp64, blocks of 32), and the symmetric run's HalfStep (its record of the ranges)."""
    made = []
    init = PT.HalfStep.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(PT.HalfStep, "__init__", record)
    runs = []
    for sym in (False, True):
        cfg = replace(PT.default_config(DEVICE == "cpu", torch.float64), sym_block=32, sink_sym=sym)
        p = PT.prepare_triton(mc, None, 2500, lam, None, cfg)
        runs.append(PT.sinkhorn_potentials_triton(p, max_iter, tol, cfg, scheme=scheme))
    return runs[0], runs[1], made[-1]


def test_anderson_runs_the_symmetric_half_step(monkeypatch):
    # Anderson (the default for a fixed lam) takes the symmetric half-step too: its mixer records
    # the range of F - G it leaves, so the next half-step's shift is centred and the symmetric
    # sums stay in range; the potentials are the shifted pass's (fp64) and the symmetric pass ran
    _, mc, _ = make_inputs(2, 8, 90, dtype=torch.float64, seed=4)
    (f0, g0, n0, it0), (f1, g1, n1, it1), step = shifted_and_symmetric(monkeypatch, mc, 0.3, 40, 1e-7, "anderson")
    torch.testing.assert_close(f1, f0, rtol=0, atol=1e-10)
    torch.testing.assert_close(g1, g0, rtol=0, atol=1e-10)
    assert n1 == n0 and torch.equal(it1, it0)
    spread = step.rng[1:n1].sum(-1)  # (max (F - G) + max (G - F)) after each step
    assert torch.isfinite(spread).all() and (spread <= SYM_SPREAD).all(), spread


def test_overrelaxed_runs_the_symmetric_half_step(monkeypatch):
    # over-relaxation takes the symmetric half-step too: its relaxation kernel rewrites the range
    # of F - G where it moves a potential, and the polish after a relaxed stop starts from a
    # range of +inf (the kernel's shifted pass: samples froze at different half-steps). fp64, run
    # to convergence: the shifted and the symmetric pass reach the same potentials (their omega
    # decisions may differ in rounding, so not their counts)
    _, mc, _ = make_inputs(3, 8, 90, dtype=torch.float64, seed=4)
    (f0, g0, _, it0), (f1, g1, _, it1), step = shifted_and_symmetric(monkeypatch, mc, 0.05, 400, 1e-12,
                                                                     "overrelaxed")
    assert (it1 < 400).all() and (it0 < 400).all()  # converged
    torch.testing.assert_close(f1, f0, rtol=0, atol=1e-9)
    torch.testing.assert_close(g1, g0, rtol=0, atol=1e-9)
    for b in range(3):  # each sample's half-steps until it froze (the polish counts one iteration more)
        spread = step.rng[1:2 * (int(it1[b]) - 1), b].sum(-1)
        assert torch.isfinite(spread).all() and (spread <= SYM_SPREAD).all(), (b, spread)
    assert (step.rng[step.polish_row] == float("inf")).all()
    assert torch.isfinite(step.rng[step.polish_row + 1]).any()  # the polish ran (for some sample)


def test_symmetric_half_step_with_more_than_32_tickets():
    # 69 blocks of 16 answers: a program covers 34 blocks plus its own, so its tickets take two
    # vector atomics (32 + 3) and it may complete blocks in either
    _, mc, _ = make_inputs(1, 4, 1100, dtype=torch.float64, seed=5)
    p = prepare_pairwise(mc.cpu(), None, 2500, None, None)
    sol = sinkhorn_log_potentials_cpu(p, 1, 0.0, slice(None))
    cfg = replace(PT.default_config(DEVICE == "cpu", torch.float64), sym_block=16, sink_split=1)
    f, g, _, _, _ = PT.sinkhorn_log_potentials_triton(mc, None, None, 2500, 1, 0.0, None, cfg)
    torch.testing.assert_close(f.cpu(), sol.f, rtol=0, atol=1e-10)
    torch.testing.assert_close(g.cpu(), sol.g, rtol=0, atol=1e-10)


def test_sinkhorn_weights_doubly_stochastic_fp32():
    _, mc, _ = make_inputs(1, 5, 257, seed=6)
    f, g, order, _, _ = PT.sinkhorn_log_potentials_triton(mc, tol=1e-6)
    f, g, order = f.cpu(), g.cpu(), order.cpu()
    U = R.pairwise_uncertainty_literal(mc[0].double().cpu()[:, order[0]])
    lam = R.auto_lam_literal(U)
    W = torch.exp(f[0].double()[:, None] + g[0].double()[None, :] - U / lam) * (1 - torch.eye(257, dtype=torch.float64))
    torch.testing.assert_close(W.sum(0), torch.ones(257, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(W.sum(1), torch.ones(257, dtype=torch.float64), rtol=0, atol=1e-5)


def test_split_choice_fills_the_last_wave():
    # B = 32, K = 2500, 128-row blocks: 640 programs; H100: 132 SMs x 2 phase-1 programs
    assert choose_split(640, 264) == 2  # 2.4 waves -> 4.85 waves
    assert choose_split(2640, 264) == 1  # whole waves already
    assert choose_split(20, 264) == 4  # one small sample: spread it


class HostWork(TorchDispatchMode):
    """Counts the PyTorch ops a call dispatches outside Triton launches (views apart: they launch
    nothing on a GPU) and the Triton launches: what the host pays per call on a GPU."""

    def __init__(self, launcher_cls):
        super().__init__()
        self.ops, self.views, self.launches = [], 0, []
        self.launcher_cls, self.inside = launcher_cls, 0

    def __enter__(self):
        launch, host = self.launcher_cls.__getitem__, self

        def counting(kernel, grid):
            run = launch(kernel, grid)

            def wrapped(*args, **kwargs):
                host.launches.append(getattr(getattr(kernel, "fn", None), "__name__", repr(kernel)))
                host.inside += 1
                try:
                    return run(*args, **kwargs)
                finally:
                    host.inside -= 1
            return wrapped
        self._launch = launch
        self.launcher_cls.__getitem__ = counting
        # the Sinkhorn loop's relaunches through the compiled kernel's launcher (on a GPU)
        direct, self._direct = DirectLaunch.run_compiled, DirectLaunch.run_compiled

        def counting_direct(launcher, *args):
            host.launches.append(launcher.kernel.fn.__name__)
            return direct(launcher, *args)
        DirectLaunch.run_compiled = counting_direct
        return super().__enter__()

    def __exit__(self, *exc):
        self.launcher_cls.__getitem__ = self._launch
        DirectLaunch.run_compiled = self._direct
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside:
            if func.is_view:
                self.views += 1
            else:
                self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("symmetric", [False, True])
def test_plain_sinkhorn_is_one_launch_per_half_step(symmetric):
    # launches are what the host-bound defaults path pays on a GPU: the update is part of the
    # half-step's launch (with one column share and with several)
    _, mc, _ = make_inputs(2, 4, 40, seed=3)
    kernel = "sinkhorn_symmetric_half_step_kernel" if symmetric else "sinkhorn_half_step_kernel"
    for split in (1, 2):
        cfg = replace(PT.default_config(DEVICE == "cpu", torch.float32), sink_bm=16, sink_bn=16, sink_split=split,
                      sink_sym=symmetric, sym_block=16)
        p = PT.prepare_triton(mc, None, 40, 0.5, None, cfg)
        with HostWork(type(PT.sinkhorn.sinkhorn_half_step_kernel)) as work:
            PT.sinkhorn_potentials_triton(p, 3, 0.0, cfg)
        assert work.launches == [kernel] * 6, work.launches


class CompiledStandIn:
    """A stand-in for the CompiledKernel a JIT launch returns: its launcher records the call."""

    def __init__(self, log):
        self.log, self.function, self.packed_metadata = log, object(), object()

    def run(self, *launch):
        self.log.append(("direct", launch[:3], launch[9:], (launch[4], launch[5]) == (self.function,
                                                                                   self.packed_metadata)))


class KernelStandIn:
    """Binds a launch as Triton's ``JITFunction.run`` does (every parameter in signature order,
    constexprs included, defaults applied) and returns a :class:`CompiledStandIn`."""

    def __init__(self, real, log):
        self.real, self.log, self.arg_names, self.params = real, log, real.arg_names, getattr(real, "params", ())

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs}
            bound = inspect.signature(self.real.fn).bind(*args, **kwargs)
            bound.apply_defaults()
            self.log.append(("jit", tuple(grid), tuple(bound.arguments.values()), options))
            return CompiledStandIn(self.log)
        return launch


def direct_and_jit_runs(monkeypatch, module, name, make, run):
    """The launches of ``run(launcher_owner)`` through the JIT alone, then with direct launches,
    on one owner (``make()``, whose ``.launch`` / ``.launch_symmetric`` is the DirectLaunch):
    asserts that every launch passes the same arguments both ways (each direct one what the JIT
    bound for it) and returns the kinds of the second run."""
    from radi_fast.ops import direct_launch

    monkeypatch.setattr(direct_launch, "_current_stream", lambda: (0, "stream"))
    real, log = getattr(module, name), []
    monkeypatch.setattr(module, name, KernelStandIn(real, log))
    owner = make()
    launcher = getattr(owner, "launch_symmetric", None) or owner.launch
    runs = {}
    for direct in (False, True):
        launcher.enabled = direct
        log.clear()
        run(owner)
        runs[direct] = list(log)
    assert all(entry[0] == "jit" for entry in runs[False])
    assert all(entry[3] for entry in runs[True] if entry[0] == "direct")  # its own function and metadata
    for a, b in zip(runs[True], runs[False], strict=True):
        assert a[1] == b[1]  # grid
        assert len(a[2]) == len(b[2]) == len(real.arg_names)
        assert all(x is y or (not isinstance(x, torch.Tensor) and x == y) or
                   (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.data_ptr() == y.data_ptr()
                    and x.dtype == y.dtype) for x, y in zip(a[2], b[2])), (a, b)
    return [entry[0] for entry in runs[True]], runs[True]


def test_direct_launch_passes_what_the_jit_binds(monkeypatch):
    # the Sinkhorn loop relaunches the symmetric half-step through the compiled kernel's launcher
    # (ops/direct_launch.py): every launch must pass what Triton's JIT would have bound for it, and
    # only launches whose tensors are those of a kept compilation may skip the JIT
    _, mc, _ = make_inputs(3, 4, 40, seed=3)
    base = replace(PT.default_config(DEVICE == "cpu", torch.float32), sym_block=16)
    p = PT.prepare_triton(mc, None, 40, 0.5, None, base)
    F, G = torch.zeros(2, 3, 40).unbind(0)
    delta, gate = torch.zeros(7, 3), torch.zeros(2, 3)
    tol = torch.zeros(1)
    names = PT.sinkhorn.sinkhorn_symmetric_half_step_kernel.arg_names
    from radi_fast.ops import direct_launch

    with monkeypatch.context() as m:  # the knob decides where something is compiled
        m.setattr(direct_launch, "triton_interpret", lambda: False)
        assert [PT.HalfStep(p, replace(base, direct_launch=d), tol, F, symmetric=True,
                            half_steps=6).launch_symmetric.enabled for d in (False, True)] == [False, True]
    # the interpreter compiles nothing to keep
    assert PT.HalfStep(p, base, tol, F, symmetric=True, half_steps=6).launch_symmetric.enabled == (DEVICE != "cpu")

    def run(step):
        for h in range(6):
            side = h % 2
            step.symmetric(h, side, (F, G)[side], (G, F)[side], delta, h // 2)
        step.symmetric(step.polish_row, 0, F, G, gate, 0)  # another gate tensor: a new compilation key
        step.symmetric(step.polish_row, 1, G, F, gate, 0)

    kinds, launches = direct_and_jit_runs(
        monkeypatch, PT.sinkhorn, "sinkhorn_symmetric_half_step_kernel",
        lambda: PT.HalfStep(p, base, tol, F, symmetric=True, half_steps=6, polish=True), run)
    assert kinds == ["jit", "jit", "direct", "direct", "direct", "direct", "jit", "jit"], kinds
    assert [entry[2][names.index("rng_row")] for entry in launches] == [0, 1, 2, 3, 4, 5, 7, 7]
    assert [entry[2][names.index("gate_row")] for entry in launches] == [0, 0, 1, 1, 2, 2, 0, 0]
    # a launch hook (a profiler) sees every launch: the JIT path then
    from triton import knobs

    def hook(metadata):
        return None
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        log = []
        monkeypatch.setattr(PT.sinkhorn, "sinkhorn_symmetric_half_step_kernel",
                            KernelStandIn(PT.sinkhorn.sinkhorn_symmetric_half_step_kernel.real, log))
        step = PT.HalfStep(p, base, tol, F, symmetric=True, half_steps=6)
        step.launch_symmetric.enabled = True  # (off under the interpreter)
        for h in range(3):
            step.symmetric(h, 0, F, G, delta, h)
        assert [entry[0] for entry in log] == ["jit"] * 3
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)


@pytest.mark.parametrize("scheme", ["anderson", "overrelaxed"])
def test_direct_launch_of_the_scheme_kernels(monkeypatch, scheme):
    # the accelerated schemes' per-half-step kernels take rows of the loop's buffers as views
    # (prev, nxt, the range record): a direct relaunch only where Triton would specialise them as
    # a kept compilation (dtype, 16-byte alignment: with B = 3 fp32 rows, every other row is not)
    from radi_fast.ops import sinkhorn_accel_triton as A

    _, mc, _ = make_inputs(3, 4, 40, seed=3)
    cfg = PT.default_config(DEVICE == "cpu", torch.float32)
    p = PT.prepare_triton(mc, None, 40, 0.5, None, cfg)
    F, G = torch.zeros(2, 3, 40).unbind(0)
    delta, rng = torch.zeros(10, 3), torch.zeros(18, 3, 2)
    tol = torch.zeros(1)
    if scheme == "anderson":
        def make():
            return A.AndersonLauncher(p, tol, direct=True)

        def run(mixer):
            mixer.steps = 0  # the same ring positions in both runs
            for it in range(6):
                mixer.step(G, F, delta[it], delta[it + 1], last=it == 5, rng=rng[it + 1] if it % 3 else None)
        name = "sinkhorn_anderson_kernel"
    else:
        def make():
            return A.RelaxationLauncher(p, tol, direct=True)

        def run(relax):
            for it in range(8):  # row alignments repeat every 4 iterations
                for side, (pot, other) in enumerate(((F, G), (G, F))):
                    relax.after_half_step(side, pot, delta[it], delta[it + 1], step=it < 7, other=other,
                                          rng=rng[2 * it + side + 1])
            relax.after_half_step(0, F, delta[0], delta[1], step=True)  # the shifted pass: no range
        name = "sinkhorn_relax_kernel"
    kinds, launches = direct_and_jit_runs(monkeypatch, A.sinkhorn_accel, name, make, run)
    assert "direct" in kinds and kinds[0] == "jit", kinds
    names = getattr(A.sinkhorn_accel, name).arg_names
    keys = set()  # a JIT launch exactly where a launch's specialisation is new
    for kind, _, values, _ in launches:
        spec = tuple((v.dtype, v.data_ptr() % 16 == 0) if isinstance(v, torch.Tensor) else
                     v if names[i] not in ("head", "last") else None for i, v in enumerate(values))
        assert (kind == "jit") == (spec not in keys), (kind, spec)
        keys.add(spec)


@pytest.mark.skipif(DEVICE == "cpu", reason="the interpreter compiles nothing to relaunch (the stand-in tests "
                                             "above check the arguments on the CPU)")
@pytest.mark.parametrize("scheme,lam,dtype", [("plain", None, torch.float32), ("plain", 0.05, torch.float64),
                                              ("anderson", 0.05, torch.float32), ("overrelaxed", 0.05, torch.float32)])
def test_direct_launch_equals_the_jit_path(monkeypatch, scheme, lam, dtype):
    # on a GPU: the compiled kernels relaunched directly give the JIT path's potentials bit for bit
    # (the kernels are deterministic), over B = 5 (rows of delta at every alignment) and ragged rows
    _, mc, _ = make_inputs(5, 6, 150, dtype=dtype, seed=4)
    lengths = torch.tensor([150, 97, 2, 1, 120], device=DEVICE)
    relaunched = []
    run_compiled = DirectLaunch.run_compiled

    def counting(launcher, *args):
        relaunched.append(launcher.kernel.fn.__name__)
        return run_compiled(launcher, *args)
    monkeypatch.setattr(DirectLaunch, "run_compiled", counting)
    out = {}
    for direct in (False, True):
        relaunched.clear()
        cfg = replace(PT.default_config(False, dtype), direct_launch=direct, sym_block=32)
        out[direct] = PT.sinkhorn_log_potentials_triton(mc, None, lam, 2500, 40, 1e-6, lengths, cfg, scheme)
        assert bool(relaunched) == direct, relaunched
    for a, b in zip(out[True], out[False], strict=True):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


class FlagEvent:
    """A stand-in for the CUDA event of a flag copy: lands after ``lag`` queries (None: only when
    waited for, a device far behind the host); counts the waits."""

    def __init__(self, lag, log):
        self.lag, self.log = lag, log

    def query(self):
        if self.lag is None:
            return False
        self.lag -= 1
        return self.lag < 0

    def synchronize(self):
        self.log.append("wait")


@pytest.mark.parametrize("every,ahead,lag,stop,waits", [
    (4, 4, None, 12, 2),  # flags at 4 (active) and 8 (frozen), each waited for 4 iterations later
    (2, 3, None, 13, 3),
    (1, 1, None, 8, 7),
    (4, 0, None, None, 0),  # never waits: a device that never catches up is never heard from
    (4, 4, 0, 9, 0),  # lands by the next iteration: no wait
    (4, 4, 2, 11, 0),
    (4, 2, 5, 10, 2),
])
def test_stop_poll_bounds_the_launches_past_the_stop(every, ahead, lag, stop, waits):
    # the samples are active through iteration 6 (delta[p] > tol for p <= 6): the first flag that
    # says "stop" is the first poll at p >= 7; an asynchronous host stops once it has read it
    steps = 40
    delta = torch.zeros(steps + 1, 3)
    delta[:7, 1] = 1.0
    log = []
    poll = PT.StopPoll(delta, 0.5, every, ahead, asynchronous=True)
    poll._copy = lambda flag: (flag.clone(), FlagEvent(lag, log))
    stopped = next((n for n in range(1, steps + 1) if poll.stop_after(n)), None)
    assert (stopped, len(log)) == (stop, waits)
    synchronous = PT.StopPoll(delta, 0.5, every, ahead, asynchronous=False)
    assert next(n for n in range(1, steps + 1) if synchronous.stop_after(n)) == -(-7 // every) * every


@pytest.mark.parametrize("lam", [None, 0.5])
def test_host_work_of_one_call(lam):
    # a call with the defaults is host-bound on a GPU (docs/triton.md): the preparation is one
    # kernel (statistics, lam and points), the loss one kernel that writes the gradient in
    # place; PyTorch ops outside the Sinkhorn loop stay few (the previous design dispatched 117
    # non-view ops per call here: gather, scaling, tie groups, lam conversions, scatter)
    student, mc, _ = make_inputs(3, 5, 70, seed=2)
    cfg = replace(PT.default_config(DEVICE == "cpu", torch.float32), sink_bm=32, sink_bn=32, stats_bk=32, loss_bm=32,
                  loss_bn=32)
    with HostWork(type(PT.sinkhorn.sinkhorn_half_step_kernel)) as work:
        loss, grad, iterations = PT.pairwise_forward_triton(student, mc, None, None, 1.0, "ot", lam, 2500, 100, 1e-5, 0,
                                                            "plain", cfg)
    assert torch.isfinite(loss).all() and (iterations > 0).all()
    half_steps = work.launches.count("sinkhorn_symmetric_half_step_kernel")
    assert work.launches == ["teacher_prepare_kernel"] + ["sinkhorn_symmetric_half_step_kernel"] * half_steps + \
        ["margin_ranking_symmetric_kernel"], work.launches
    polls = half_steps // 2 // cfg.check_every  # a flag read (on CUDA: a pinned copy and an event)
    # 34 here at 2 polls (31 with sink_sym=0; 35 with loss_sym=0, whose per-sample sum is two ops);
    # the student's scores in teacher order come from the preparation kernel (5 ops fewer), the
    # valid-answer mask is never built (2), a fixed lam's tensor only exists when lam is set
    assert len(work.ops) <= 34 + (1 if lam is not None else 0) + 5 * polls, (len(work.ops), work.ops)
    assert not any(op.startswith(("aten.gather", "aten.masked_fill", "aten.lt", "aten.arange")) for op in work.ops), \
        work.ops


@pytest.mark.parametrize("scheme", ["plain", "anderson", "overrelaxed", "scaling"])
def test_no_tensor_from_host_data(scheme):
    # torch.tensor(python values, device=cuda) is a synchronous copy from pageable memory (the
    # Anderson launcher made its ridge weights that way: one host sync per call on the scheme
    # that "auto" picks for a fixed lam with tol > 0); under a dispatch mode it shows as lift_fresh
    student, mc, _ = make_inputs(3, 5, 70, seed=2)
    cfg = replace(PT.default_config(DEVICE == "cpu", torch.float32), sink_bm=32, sink_bn=32, stats_bk=32, loss_bm=32,
                  loss_bn=32)
    seen, lifted = [], []

    class Every(TorchDispatchMode):  # views included: lift_fresh is one
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            if "lift_fresh" in str(func) and args[0].dim() > 0:  # (0-d: a Python scalar, e.g. x[0] = 0.0)
                lifted.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    with Every():
        PT.pairwise_forward_triton(student, mc, None, None, 1.0, "ot", 0.05, 2500, 30, 1e-5, 0, scheme, cfg)
    assert "aten.sort.stable" in seen and not lifted, lifted


def test_symmetric_register_cap():
    # 128 only where ptxas would take 129-130 and leave 3 programs of 4 warps per SM (fp32, 64 x 64)
    from radi_fast.ops.triton_config import TritonConfig, parse_config_override, symmetric_maxnreg

    cfg = TritonConfig()
    assert symmetric_maxnreg(cfg, True) == 128
    assert symmetric_maxnreg(cfg, False) is None  # fp64 points
    assert symmetric_maxnreg(replace(cfg, sym_block=128), True) is None
    assert symmetric_maxnreg(replace(cfg, sym_warps=8), True) is None
    assert symmetric_maxnreg(parse_config_override("sink_maxnreg=0", cfg), True) is None
    assert symmetric_maxnreg(parse_config_override("sink_maxnreg=96", cfg), False) == 96


def test_half_step_register_cap():
    # the cap that keeps two 8-warp programs per SM applies where it does not spill (fp32 row sums
    # reduced per tile, 8 warps: tests/test_triton_compile.py), never to fp64 or per-pair sums
    from radi_fast.ops.triton_config import TritonConfig, half_step_maxnreg, parse_config_override

    cfg = TritonConfig()
    assert half_step_maxnreg(cfg, True) == 128
    assert half_step_maxnreg(cfg, False) is None  # fp64 points
    assert half_step_maxnreg(replace(cfg, sink_acc=True), True) is None
    assert half_step_maxnreg(replace(cfg, sink_warps=4), True) is None
    assert half_step_maxnreg(parse_config_override("sink_maxnreg=0", cfg), True) is None
    assert half_step_maxnreg(parse_config_override("sink_maxnreg=96,sink_warps=4", cfg), False) == 96


def test_random_weights_bit_exact_with_cpu_hash():
    g = torch.Generator().manual_seed(0)
    n = 3000
    rows = torch.randint(0, 1 << 20, (n,), generator=g)
    i = torch.randint(0, 1 << 32, (n,), generator=g)
    j = torch.randint(0, 1 << 32, (n,), generator=g)
    i[:3] = torch.tensor([0, (1 << 32) - 1, 1 << 31])
    for seed in (0, 1, 2**31 - 2, 123456789):
        expected = pair_uniform(seed, rows, i, j).float()
        got = PT.pair_uniform_triton(seed, rows.to(DEVICE), i.to(DEVICE), j.to(DEVICE)).cpu()
        assert torch.equal(got, expected), seed


# ----------------------------------------------------------------------------- autograd, memory, op
def test_gradient_only_to_student_and_reductions():
    student, mc, teacher = make_inputs(3, 5, 37, seed=17, explicit_teacher=True)
    s = student.clone().requires_grad_(True)
    mc = mc.clone().requires_grad_(True)
    teacher = teacher.clone().requires_grad_(True)
    loss = radi_fast.radi_pairwise_loss(s, mc, teacher, backend="triton", reduction="sum")
    loss.backward()
    assert mc.grad is None and teacher.grad is None
    s2 = student.clone().requires_grad_(True)
    radi_fast.radi_pairwise_loss(s2, mc.detach(), teacher.detach(), backend="triton").backward()
    torch.testing.assert_close(s.grad, s2.grad * 3)


def test_env_var_selects_triton(monkeypatch):
    calls = []
    real = PT.pairwise_loss_call

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(PT, "pairwise_loss_call", spy)
    student, mc, _ = make_inputs(2, 5, 37, seed=1)
    monkeypatch.setenv("RADI_FAST_BACKEND", "triton")
    a = radi_fast.radi_pairwise_loss(student, mc, margin_mode="uniform")
    assert len(calls) == 1
    monkeypatch.setenv("RADI_FAST_BACKEND", "torch")
    b = radi_fast.radi_pairwise_loss(student, mc, margin_mode="uniform")
    assert len(calls) == 1
    torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-5, atol=1e-6)


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.setattr(PT, "triton_interpret", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        PT.check_device(torch.zeros(1))


class NumelRecorder(TorchDispatchMode):
    """Records the largest output (elements) of every op that goes through the dispatcher."""

    def __init__(self):
        super().__init__()
        self.largest = (0, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest[0]:
                self.largest = (t.numel(), str(func))
        return out


def test_no_k_by_k_tensor_in_the_triton_path():
    K = 257
    student, mc, _ = make_inputs(1, 5, K, seed=3)
    s = student.clone().requires_grad_(True)
    rec = NumelRecorder()
    with rec:
        loss = radi_fast.radi_pairwise_loss(s, mc, backend="triton")
        loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert rec.largest[0] < K * K, f"{rec.largest[1]} produced {rec.largest[0]} elements >= K*K = {K * K}"
    # negative control: the literal reference materialises [T, K, K] and the recorder sees it
    ref_rec = NumelRecorder()
    with ref_rec:
        R.radi_pairwise_loss_literal(student.cpu(), mc.cpu())
    assert ref_rec.largest[0] >= K * K


def op_args(mode="uniform", dtype=torch.float32, requires_grad=True):
    student, mc, _ = make_inputs(2, 5, 37, dtype=dtype, seed=23)
    lengths = torch.tensor([37, 20], device=DEVICE)
    return (student.requires_grad_(requires_grad), mc, None, lengths, 1.0, mode, None, 2500, 20, 1e-5, 7, "plain")


def test_opcheck_registered_op():
    assert hasattr(torch.ops.radi_fast, "pairwise_loss_triton")
    torch.library.opcheck(PT.pairwise_loss_op, op_args("uniform"))
    torch.library.opcheck(PT.pairwise_loss_op, op_args("ot"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_torch_compile_step():
    torch.manual_seed(0)
    B, T, N = 2, 5, 37
    _, mc, _ = make_inputs(B, T, N, seed=31)
    feats = torch.randn(B, 8, device=DEVICE)
    model = torch.nn.Linear(8, N).to(DEVICE)

    def step(x):
        scores = model(x)
        return radi_fast.radi_pairwise_loss(scores, mc, backend="triton", margin_mode="ot")

    def step_op(x):  # the op alone traces without a graph break
        scores = model(x)
        return PT.pairwise_loss_op(scores, mc, None, None, 1.0, "ot", None, 2500, 100, 1e-5, 0, "plain")[0].mean()

    eager = step(feats)
    (g_eager,) = torch.autograd.grad(eager, model.weight)
    compiled = torch.compile(step, backend="aot_eager")(feats)
    (g_comp,) = torch.autograd.grad(compiled, model.weight)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(g_comp, g_eager)
    full = torch.compile(step_op, backend="aot_eager", fullgraph=True)(feats)
    torch.testing.assert_close(full, eager)
