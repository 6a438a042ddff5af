"""The accelerated schemes' fused kernels (kernels/sinkhorn_accel.py) against the PyTorch steps
they replace (radi_fast/ops/sinkhorn_schemes.py): one relaxed half-step with its safeguard, the
omega update, and a run of Anderson steps, per sample, with padding, a sample with one answer and
a frozen sample. Run by the Triton interpreter here (RADI_FAST_TEST_DEVICE=cuda: compiled)."""
import os

import pytest
import torch

from conftest import make_mc

pytest.importorskip("triton")
from radi_fast.ops import pairwise_triton as PT  # noqa: E402
from radi_fast.ops.sinkhorn_accel_triton import AndersonLauncher, RelaxationLauncher  # noqa: E402
from radi_fast.ops.sinkhorn_schemes import ANDERSON_MEMORY, LN2, Anderson, Relaxation  # noqa: E402

DEVICE = os.environ.get("RADI_FAST_TEST_DEVICE", "cpu")
TOL = 1e-7


def problem(dtype, K=300):
    """Four samples: full, 37 valid answers, one answer (no partner), full but frozen."""
    mc = make_mc(4, 3, K, dtype=torch.float64, seed=3).to(dtype=dtype, device=DEVICE)
    lengths = torch.tensor([K, 37, 1, K], device=DEVICE)
    cfg = PT.default_config(DEVICE == "cpu", dtype)
    p = PT.prepare_triton(mc, None, 2500, 0.5, lengths, cfg)
    prev = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=dtype, device=DEVICE)  # the last sample is frozen
    return p, prev


def lanes(p, side):
    """Z's p / q lane as the potential minus hs (zb + zs when split)."""
    z = p.zb[:, : p.hs.shape[1], p.T + side].double()
    if p.split:
        z = z + p.zs[:, : p.hs.shape[1], p.T + side].double()
    return z


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("omega", [1.0, 1.3, 1.9])
def test_relaxed_half_step_matches_the_pytorch_step(dtype, omega):
    p, prev = problem(dtype)
    g = torch.Generator().manual_seed(1)
    B, K = p.hs.shape
    before = (torch.randn(B, K, generator=g, dtype=torch.float64) * 3).to(dtype=dtype, device=DEVICE)
    # a plain step that the safeguard accepts for some samples and rejects for others
    step = torch.randn(B, K, generator=g, dtype=torch.float64) * torch.tensor([0.01, 3.0, 1.0, 1.0])[:, None]
    step[1] = step[1].abs()  # large increases: a strongly relaxed step would lower the dual objective
    plain = before + step.to(dtype=dtype, device=DEVICE)
    active = (prev > TOL) & (p.n_valid >= 2)
    plain = torch.where(active[:, None] & p.valid, plain, before)  # frozen / padded rows: no plain step
    ok = p.valid & (p.n_valid >= 2)[:, None]

    ref = Relaxation(B, dtype, DEVICE, unit=LN2)
    ref.omega.fill_(omega)
    expected = ref.step(before, plain, ok)

    launcher = RelaxationLauncher(p, torch.full((1,), TOL, dtype=dtype, device=DEVICE))
    launcher.omega.fill_(omega)
    launcher.save(before)
    pot = plain.clone()
    nxt = torch.zeros(B, dtype=dtype, device=DEVICE)
    # the symmetric half-step's record of the range of F - G: rewritten where the step moves F
    other = (torch.randn(B, K, generator=g, dtype=torch.float64) * 2).to(dtype=dtype, device=DEVICE)
    rng = torch.full((B, 2), -123.0, dtype=dtype, device=DEVICE)
    launcher.after_half_step(0, pot, prev, nxt, step=True, other=other, rng=rng)
    tol = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(pot[p.valid], expected[p.valid], **tol)
    assert torch.equal(launcher.rejected.bool() & active, ref.rejected & active)
    if omega > 1.5:
        assert bool(ref.rejected[1]) and not bool(ref.rejected[0])  # both branches are exercised
    moved = active[:, None] & p.valid & (pot != plain)
    torch.testing.assert_close(lanes(p, 0)[moved], (pot - p.hs).double()[moved], rtol=0, atol=1e-6)
    moved_samples = moved.any(dim=1)
    assert bool(moved_samples.any()) == (omega > 1)
    e = torch.where(p.valid, pot - other, float("nan"))
    expected_rng = torch.stack([e.nan_to_num(float("-inf")).amax(dim=1), (-e).nan_to_num(float("-inf")).amax(dim=1)], 1)
    expected_rng = torch.where(moved_samples[:, None], expected_rng, torch.full_like(expected_rng, -123.0))
    assert torch.equal(rng, expected_rng), (rng, expected_rng)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_omega_update_matches_the_pytorch_observe(dtype):
    p, prev = problem(dtype)
    prev[3] = 1.0  # all samples with a partner active here
    B = p.hs.shape[0]
    launcher = RelaxationLauncher(p, torch.full((1,), TOL, dtype=dtype, device=DEVICE))
    ref = Relaxation(B, dtype, DEVICE, unit=LN2)
    # step sizes per sample: 0 settles on a rate of 0.9 (omega jumps at step 2), then a rejected
    # step sends it back to 1 although it contracts; 1 has rates 0.9, 0.88, 0.9 (2% apart: not
    # settled), then far apart; 3 grows (no rate), then settles on 0.8, then does worse than that while relaxed
    sizes = [[1.0, 1.0, 1.0, 1.0], [0.9, 0.9, 1.0, 1.1], [0.81, 0.792, 1.0, 1.21], [0.405, 0.7128, 1.0, 0.968],
             [0.2, 0.55, 1.0, 0.7744], [0.19, 0.52, 1.0, 0.77]]
    omegas = []
    pot = p.hs.clone()
    for i, row in enumerate(sizes):
        nxt = torch.tensor(row, dtype=dtype, device=DEVICE)
        if i == 3:
            launcher.rejected[0] = 1
            ref.rejected[0] = True
        launcher.save(pot)
        launcher.after_half_step(1, pot, prev, nxt, step=False)
        active = (prev > TOL) & (p.n_valid >= 2)
        ref.observe(nxt, active)
        omegas.append(ref.omega.tolist())
        for name in ("omega", "rho", "previous"):
            torch.testing.assert_close(getattr(launcher, name), getattr(ref, name), rtol=1e-6, atol=0,
                                       msg=f"{name} after step {i}")
        torch.testing.assert_close(launcher.last_ratio, ref.last_ratio, rtol=1e-6, atol=0, equal_nan=True)
    # the reference itself does what the comments say (so the comparison covers every branch)
    assert omegas[1][0] == 1 and omegas[2][0] > 1.5 and omegas[3][0] == 1  # settled, then rejected
    assert all(o[1] == 1 for o in omegas)  # never settled
    assert omegas[4][3] > 1.3 and omegas[5][3] == 1  # settled on 0.8, then worse while relaxed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anderson_steps_match_the_pytorch_mixer(dtype):
    p, prev = problem(dtype)
    B, K = p.hs.shape
    stop = 1e-5  # above fp32's floor here: sample 1 converges early
    tol_t = torch.full((1,), stop, dtype=dtype, device=DEVICE)
    launcher = AndersonLauncher(p, tol_t)
    ref = Anderson(B, K, dtype, DEVICE, unit=LN2)
    ok = p.valid & (p.n_valid >= 2)[:, None]
    g = torch.Generator().manual_seed(2)
    # a linear map with the half-step's two features: it flips (negative slopes, a slow mode) and a
    # constant shift of x comes back reversed (the scale fix's mode); sample 1 contracts fast
    target = torch.randn(B, K, generator=g, dtype=torch.float64) + 3
    slope = -torch.linspace(0.3, 0.9, K, dtype=torch.float64)[None, :] * torch.tensor([1.0, 0.2, 1.0, 1.0])[:, None]
    x = torch.zeros(B, K, dtype=torch.float64).to(dtype=dtype, device=DEVICE)
    x_fast = x.clone()
    F = x.clone()  # the launcher's F (its half-step results)
    steps = 2 * ANDERSON_MEMORY + 3  # the ring wraps around twice
    done_seen = restarted = False
    for it in range(steps):
        active = (prev > stop) & (p.n_valid >= 2)

        def half_step(v):
            mapped = target + slope * (v.double().cpu() - target)
            if it == 7:  # a jump: the residual norm grows beyond twice its best, history dropped
                mapped[0] += torch.linspace(-20.0, 20.0, K, dtype=torch.float64)
            return torch.where(active[:, None] & p.valid, mapped.to(dtype=dtype, device=DEVICE), v)

        F = torch.where(active[:, None], half_step(x_fast), F)
        G = x_fast.clone()
        nxt = torch.zeros(B, dtype=dtype, device=DEVICE)
        last = it == steps - 1
        rng = torch.full((B, 2), -7.0, dtype=dtype, device=DEVICE)
        launcher.step(G, F, prev, nxt, last=last, rng=rng)
        # the range of F - G it leaves (the next symmetric half-step's shift); frozen: untouched
        e = torch.where(p.valid, F - G, float("nan"))
        expected_rng = torch.stack([torch.nan_to_num(e, nan=-float("inf")).amax(1),
                                    torch.nan_to_num(-e, nan=-float("inf")).amax(1)], 1)
        torch.testing.assert_close(rng[active], expected_rng[active], rtol=0, atol=1e-12 if dtype == torch.float64
                                   else 1e-4)
        assert (rng[~active] == -7.0).all()

        # the reference steps from the kernel's own iterate (no drift between the two runs)
        x_next, y_fixed, delta = ref.step(x_fast, half_step(x_fast), ok)
        done = active & ((delta <= stop) | last)
        expected_G = torch.where(done[:, None], y_fixed, torch.where(active[:, None], x_next, x_fast))
        tol = dict(rtol=0, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
        rows = p.valid & active[:, None]
        torch.testing.assert_close(G[rows], expected_G[rows], **tol, msg=lambda m: f"step {it}: {m}")
        torch.testing.assert_close(nxt[active], delta[active], rtol=1e-4, atol=tol["atol"] / 10, msg=lambda m: f"step {it}: {m}")
        assert torch.equal(nxt[~active], torch.zeros_like(nxt[~active]))  # frozen samples untouched
        fin = p.valid & done[:, None]
        torch.testing.assert_close(F[fin], y_fixed[fin], **tol)  # the converged pair is (y - c, y - c)
        assert torch.equal(launcher.count[active], ref.count[active])
        restarted |= it == 7 and int(ref.count[0]) == 1
        done_seen |= bool(done[1]) and not last
        x_fast = G
        prev = torch.where(active, nxt, prev * 0)
    assert restarted and done_seen  # the comparison covered the restart and an early convergence
    lane = lanes(p, 1)
    upd = p.valid & (p.n_valid >= 2)[:, None] & (torch.arange(B, device=DEVICE) != 3)[:, None]
    torch.testing.assert_close(lane[upd], (x_fast - p.hs).double()[upd], rtol=0, atol=1e-5)
    torch.testing.assert_close(lanes(p, 0)[upd], (F - p.hs).double()[upd], rtol=0, atol=1e-5)
