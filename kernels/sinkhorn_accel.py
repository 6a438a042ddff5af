"""The accelerated Sinkhorn schemes' work between half-steps, one program per sample
(docs/sinkhorn.md; the same arithmetic as ``radi_fast/ops/sinkhorn_schemes.py``, which the CPU
path runs in PyTorch). Fused so that a scheme costs one launch per half-step on top of plain
Sinkhorn instead of dozens of small PyTorch ops (on an H100 those ops, not the GPU, set the pace:
8x the time of a plain iteration).

Both kernels act on the rows ``i < K_b`` of a sample with ``K_b >= 2`` (the valid answers come
first), write the potential they change and its lane of Z (``pot - hs``, TF32-split when SPLIT),
and keep their per-sample state in small device tensors. Potentials are base 2.
"""
import triton
import triton.language as tl

from .common import LN2, store_lane


@triton.jit
def sinkhorn_relax_kernel(
    zb_ptr, zs_ptr, hs_ptr,  # Z [B, KP, TP] (the lane of SIDE is rewritten), hs [B, K]
    nvalid_ptr,  # [B] int64 K_b
    before_ptr,  # [B, K] the potential before the plain half-step
    pot_ptr,  # [B, K] in: the plain half-step's result; out: the relaxed one where accepted
    prev_delta_ptr, next_delta_ptr, tol_ptr,  # [B], [B], [1]: active = prev > tol; this iteration's step
    omega_ptr, previous_ptr, last_ratio_ptr, rho_ptr,  # [B] Relaxation state (compute dtype)
    rejected_ptr, relaxed_ptr,  # [B] int32 flags
    omega_max_ptr,  # [1] the largest omega, in the compute dtype
    K, KP,
    T: tl.constexpr, TP: tl.constexpr, SIDE: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr,
    STEP: tl.constexpr, OBSERVE: tl.constexpr, BLOCK: tl.constexpr,
):
    """``Relaxation.step`` (when STEP) and, after the G half-step, ``Relaxation.observe`` (when
    OBSERVE) for sample ``program_id(0)``."""
    b = tl.program_id(0).to(tl.int64)
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    active = (tl.load(prev_delta_ptr + b) > tl.load(tol_ptr)) & (kb >= 2)
    omega = tl.load(omega_ptr + b)
    rejected = tl.load(rejected_ptr + b) != 0
    if STEP:
        if active:
            # the dual objective's change, sum_i exp(L) - exp((1 - w) L) - w L, L = x - x_plain (nats)
            gain = tl.zeros([BLOCK], COMPUTE)
            for i0 in range(0, kb, BLOCK):
                rows = i0 + tl.arange(0, BLOCK)
                m = rows < kb
                x = tl.load(before_ptr + b * K + rows, mask=m, other=0.0)
                xp = tl.load(pot_ptr + b * K + rows, mask=m, other=0.0)
                L = (x - xp) * LN2
                gain += tl.where(m, tl.exp(L) - tl.exp((1 - omega) * L) - omega * L, 0.0)
            g = tl.sum(gain, axis=0)
            accepted = (omega <= 1) | (g >= 0)  # NaN (an overflow) is rejected
            rejected = rejected | (accepted == 0)
            if (omega > 1) & accepted:
                for i0 in range(0, kb, BLOCK):
                    rows = i0 + tl.arange(0, BLOCK)
                    m = rows < kb
                    x = tl.load(before_ptr + b * K + rows, mask=m, other=0.0)
                    xp = tl.load(pot_ptr + b * K + rows, mask=m, other=0.0)
                    new = x + omega * (xp - x)
                    tl.store(pot_ptr + b * K + rows, new, mask=m)
                    store_lane(zb_ptr, zs_ptr, hs_ptr, b, rows, new, m, K, KP, T, TP, SIDE, SPLIT)
    if OBSERVE:
        if active & (omega > 1):
            tl.store(relaxed_ptr + b, 1)
        delta = tl.load(next_delta_ptr + b)
        previous = tl.load(previous_ptr + b)
        last_ratio = tl.load(last_ratio_ptr + b)
        rho = tl.load(rho_ptr + b)
        ratio = delta / previous
        plain = omega <= 1
        stable = plain & active & (tl.abs(ratio - last_ratio) <= 0.01 * ratio) & (ratio < 1) & (delta > 0)
        rho = tl.where(stable, ratio, rho)
        optimum = 2 / (1 + tl.sqrt(tl.maximum(1 - rho, 1e-12)))
        optimum = tl.minimum(tl.maximum(optimum, 1.0), tl.load(omega_max_ptr))
        new_omega = tl.where(stable, optimum, omega)
        worse = (plain == 0) & active & (ratio >= rho)
        new_omega = tl.where(worse | (rejected & active), 1.0, new_omega)
        nan = tl.full((), float("nan"), COMPUTE)
        last_ratio = tl.where(active & plain, ratio, tl.where(active, nan, last_ratio))
        tl.store(omega_ptr + b, new_omega.to(COMPUTE))
        tl.store(rho_ptr + b, rho.to(COMPUTE))
        tl.store(last_ratio_ptr + b, last_ratio.to(COMPUTE))
        tl.store(previous_ptr + b, tl.where(active, delta, previous))
        tl.store(rejected_ptr + b, 0)
    else:
        tl.store(rejected_ptr + b, rejected.to(tl.int32))


@triton.jit
def _history_rows(hist_ptr, b, slots, head, rows, m, K, newest,
                  M: tl.constexpr, MP: tl.constexpr):
    """The ring ``hist`` [B, M + 1, K] as logical [MP, BLOCK] tiles (slot 0 the oldest):
    ``lo[j] = h[j]`` for j < M and ``hi[j] = h[j + 1]`` with ``h[M] = newest`` (passed in, not
    read back: it is being written by this launch)."""
    phys_lo = (head + slots) % (M + 1)
    phys_hi = (head + slots + 1) % (M + 1)
    base = hist_ptr + b * (M + 1) * K
    lo = tl.load(base + phys_lo[:, None] * K + rows[None, :], mask=(slots[:, None] < M) & m[None, :], other=0.0)
    hi = tl.load(base + phys_hi[:, None] * K + rows[None, :],
                 mask=(slots[:, None] < M - 1) & m[None, :], other=0.0)
    hi = tl.where(slots[:, None] == M - 1, newest[None, :], hi)
    return lo, hi


@triton.jit(do_not_specialize=["head"])  # one compiled variant for every ring position
def sinkhorn_anderson_kernel(
    zb_ptr, zs_ptr, hs_ptr,  # Z [B, KP, TP] (the q lane is rewritten), hs [B, K]
    nvalid_ptr,  # [B] int64 K_b
    start_ptr,  # [B, K] g before the iteration
    pot_ptr,  # [B, K] in: G(F(g)); out: the extrapolated g where the sample moved
    prev_delta_ptr, next_delta_ptr, tol_ptr,  # [B], [B], [1]
    x_ptr, r_ptr,  # [B, M + 1, K] ring buffers of iterates and residuals
    count_ptr,  # [B] int64 usable history length
    best_ptr,  # [B] smallest residual norm so far
    ridge_ptr,  # [1] float64 Tikhonov weight relative to the trace
    K, KP, head,  # head: physical slot of the oldest entry after this step
    T: tl.constexpr, TP: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr,
    M: tl.constexpr, MP: tl.constexpr, BLOCK: tl.constexpr,
):
    """``Anderson.step`` for sample ``program_id(0)``; the result is kept where the sample ran this
    iteration and has not converged (``prev > tol``, ``next > tol``), as the PyTorch loop does."""
    b = tl.program_id(0).to(tl.int64)
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    kb_ok = tl.where(kb >= 2, kb, 0)  # the entries that take part
    tol = tl.load(tol_ptr)
    moved = (tl.load(prev_delta_ptr + b) > tol) & (kb >= 2) & (tl.load(next_delta_ptr + b) > tol)
    newest_phys = (head + M) % (M + 1)
    # pass 1: the residual r = map(g) - g, its norm, the newest history entries
    sq = tl.zeros([BLOCK], COMPUTE)
    for i0 in range(0, K, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        inside = rows < K
        m = rows < kb_ok
        g = tl.load(start_ptr + b * K + rows, mask=inside, other=0.0)
        r = tl.where(m, tl.load(pot_ptr + b * K + rows, mask=inside, other=0.0) - g, 0.0)
        sq += r * r
        tl.store(x_ptr + (b * (M + 1) + newest_phys) * K + rows, g, mask=inside)
        tl.store(r_ptr + (b * (M + 1) + newest_phys) * K + rows, r, mask=inside)
    norm = tl.sqrt(tl.sum(sq, axis=0))
    best = tl.load(best_ptr + b)
    count = tl.load(count_ptr + b)
    count = tl.where(norm > 2 * best, 0, count)
    tl.store(best_ptr + b, tl.minimum(best, norm))
    count = tl.minimum(count + 1, M + 1)
    tl.store(count_ptr + b, count)
    slots = tl.arange(0, MP)
    usable = (slots >= M + 1 - count) & (slots < M)
    # pass 2: the normal equations of the residual-difference fit, in float64
    A = tl.zeros([MP, MP], tl.float64)
    rhs = tl.zeros([MP], tl.float64)
    for i0 in range(0, kb_ok, BLOCK):
        rows = i0 + tl.arange(0, BLOCK)
        m = rows < kb_ok
        g = tl.load(start_ptr + b * K + rows, mask=m, other=0.0)
        r = tl.where(m, tl.load(pot_ptr + b * K + rows, mask=m, other=0.0) - g, 0.0)
        lo, hi = _history_rows(r_ptr, b, slots, head, rows, m, K, r, M, MP)
        dR = tl.where(usable[:, None], hi - lo, 0.0).to(tl.float64)
        rhs += tl.sum(dR * r.to(tl.float64)[None, :], axis=1)
        for j in tl.static_range(M):
            dRj = tl.sum(tl.where(slots[:, None] == j, dR, 0.0), axis=0)
            A += tl.where(slots[None, :] == j, tl.sum(dR * dRj[None, :], axis=1)[:, None], 0.0)
    diag = slots[:, None] == slots[None, :]
    trace = tl.sum(tl.sum(tl.where(diag, A, 0.0), axis=1), axis=0)
    ridge = tl.load(ridge_ptr) * trace + tl.full((), 2.2250738585072014e-308, tl.float64)  # fp64's tiny
    A = A + tl.where(diag, tl.where(slots[:, None] < M, ridge, 1.0), 0.0)
    # Gauss-Jordan on the small symmetric positive definite system (no pivoting needed)
    for k in tl.static_range(M):
        row_k = tl.sum(tl.where(slots[:, None] == k, A, 0.0), axis=0)
        col_k = tl.sum(tl.where(slots[None, :] == k, A, 0.0), axis=1)
        pivot = tl.sum(tl.where(slots == k, row_k, 0.0), axis=0)
        b_k = tl.sum(tl.where(slots == k, rhs, 0.0), axis=0)
        factor = tl.where(slots == k, 0.0, col_k / pivot)
        A = A - factor[:, None] * row_k[None, :]
        rhs = rhs - factor * b_k
        A = tl.where(slots[:, None] == k, row_k[None, :] / pivot, A)
        rhs = tl.where(slots == k, b_k / pivot, rhs)
    gamma = tl.where(slots < M, rhs, 0.0).to(COMPUTE)
    if moved:
        # pass 3: the extrapolated iterate's mean over the valid answers (the gauge); pass 4: store
        total = tl.zeros([BLOCK], COMPUTE)
        for i0 in range(0, kb_ok, BLOCK):
            rows = i0 + tl.arange(0, BLOCK)
            m = rows < kb_ok
            nxt = _extrapolated(start_ptr, pot_ptr, x_ptr, r_ptr, b, slots, usable, gamma, newest_phys, head, rows,
                                m, K, M, MP)
            total += tl.where(m, nxt, 0.0)
        centre = tl.sum(total, axis=0) / tl.maximum(kb_ok, 1).to(COMPUTE)
        for i0 in range(0, kb_ok, BLOCK):
            rows = i0 + tl.arange(0, BLOCK)
            m = rows < kb_ok
            nxt = _extrapolated(start_ptr, pot_ptr, x_ptr, r_ptr, b, slots, usable, gamma, newest_phys, head, rows,
                                m, K, M, MP) - centre
            tl.store(pot_ptr + b * K + rows, nxt, mask=m)
            store_lane(zb_ptr, zs_ptr, hs_ptr, b, rows, nxt, m, K, KP, T, TP, 1, SPLIT)


@triton.jit
def _extrapolated(start_ptr, pot_ptr, x_ptr, r_ptr, b, slots, usable, gamma, newest_phys, head, rows, m, K,
                  M: tl.constexpr, MP: tl.constexpr):
    """``g + r - sum_j gamma_j (dX_j + dR_j)`` on ``rows`` (before centring)."""
    g = tl.load(start_ptr + b * K + rows, mask=m, other=0.0)
    r = tl.where(m, tl.load(pot_ptr + b * K + rows, mask=m, other=0.0) - g, 0.0)
    xlo, xhi = _history_rows(x_ptr, b, slots, head, rows, m, K, g, M, MP)
    rlo, rhi = _history_rows(r_ptr, b, slots, head, rows, m, K, r, M, MP)
    d = tl.where(usable[:, None], (xhi - xlo) + (rhi - rlo), 0.0)
    return g + r - tl.sum(d * gamma[:, None], axis=0)
