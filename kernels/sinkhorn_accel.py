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
def _widen_range(e_hi, e_lo, e, m):
    """Per-lane running max and min of ``e = F - G`` over the rows ``m`` (the range the symmetric
    half-step centres its shift on, kernels/sinkhorn.py)."""
    return tl.maximum(e_hi, tl.where(m, e, float("-inf"))), tl.minimum(e_lo, tl.where(m, e, float("inf")))


@triton.jit
def _store_range(rng_ptr, b, e_hi, e_lo):
    """Sample b's range record ``(max (F - G), max (G - F))`` from the running lanes."""
    tl.store(rng_ptr + 2 * b, tl.max(e_hi, axis=0))
    tl.store(rng_ptr + 2 * b + 1, -tl.min(e_lo, axis=0))


@triton.jit
def sinkhorn_relax_kernel(
    zb_ptr, zs_ptr, hs_ptr,  # Z [B, KP, TP] (the lane of SIDE is rewritten), hs [B, K]
    nvalid_ptr,  # [B] int64 K_b
    before_ptr,  # [B, K] the potential before the plain half-step
    pot_ptr,  # [B, K] in: the plain half-step's result; out: the relaxed one where accepted
    other_ptr,  # [B, K] the other potential (RECORD_RANGE)
    prev_delta_ptr, next_delta_ptr, tol_ptr,  # [B], [B], [1]: active = prev > tol; this iteration's step
    omega_ptr, previous_ptr, last_ratio_ptr, rho_ptr,  # [B] Relaxation state (compute dtype)
    rejected_ptr, relaxed_ptr,  # [B] int32 flags
    omega_max_ptr,  # [1] the largest omega, in the compute dtype
    rng_ptr,  # [B, 2] (RECORD_RANGE) the symmetric half-step's record of (max (F - G), max (G - F))
    K, KP,
    T: tl.constexpr, TP: tl.constexpr, SIDE: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr,
    STEP: tl.constexpr, OBSERVE: tl.constexpr, BLOCK: tl.constexpr, RECORD_RANGE: tl.constexpr,
):
    """``Relaxation.step`` (when STEP) and, after the G half-step, ``Relaxation.observe`` (when
    OBSERVE) for sample ``program_id(0)``. ``RECORD_RANGE``: where the step moves the potential,
    it rewrites the range of ``F - G`` that the symmetric half-step just recorded (the shift of
    the next one, kernels/sinkhorn.py)."""
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
                e_hi = tl.full([BLOCK], float("-inf"), COMPUTE)
                e_lo = tl.full([BLOCK], float("inf"), COMPUTE)
                for i0 in range(0, kb, BLOCK):
                    rows = i0 + tl.arange(0, BLOCK)
                    m = rows < kb
                    x = tl.load(before_ptr + b * K + rows, mask=m, other=0.0)
                    xp = tl.load(pot_ptr + b * K + rows, mask=m, other=0.0)
                    new = x + omega * (xp - x)
                    tl.store(pot_ptr + b * K + rows, new, mask=m)
                    store_lane(zb_ptr, zs_ptr, hs_ptr, b, rows, new, m, K, KP, T, TP, SIDE, SPLIT)
                    if RECORD_RANGE:  # F - G
                        other = tl.load(other_ptr + b * K + rows, mask=m, other=0.0)
                        e = new - other if SIDE == 0 else other - new
                        e_hi, e_lo = _widen_range(e_hi, e_lo, e, m)
                if RECORD_RANGE:
                    _store_range(rng_ptr, b, e_hi, e_lo)
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


@triton.jit(do_not_specialize=["head", "last"])  # one compiled variant for every ring position
def sinkhorn_anderson_kernel(
    zb_ptr, zs_ptr, hs_ptr,  # Z [B, KP, TP] (the p and q lanes are rewritten), hs [B, K]
    nvalid_ptr,  # [B] int64 K_b
    x_ptr,  # [B, K] G: in the iterate x; out: the extrapolated x, or F(x) - c once converged
    y_ptr,  # [B, K] F: in F(x); out: F(x) - c once converged (else unchanged)
    prev_delta_ptr, next_delta_ptr, tol_ptr,  # [B], [B] (written: max |r| in nats), [1]
    hx_ptr, hr_ptr,  # [B, M + 1, K] ring buffers of iterates and residuals
    count_ptr,  # [B] int64 usable history length
    best_ptr,  # [B] smallest residual norm so far
    ridge_ptr,  # [2] float64 Tikhonov weights relative to the trace and to |r|^2
    rng_ptr,  # [B, 2] out (RECORD_RANGE): (max (F - G), max (G - F)) after this step, for the symmetric half-step
    K, KP, head,  # head: physical slot of the oldest entry after this step
    last,  # 1 on the budget's last half-step: every active sample ends on (F(x) - c, F(x) - c)
    T: tl.constexpr, TP: tl.constexpr, SPLIT: tl.constexpr, COMPUTE: tl.constexpr,
    M: tl.constexpr, MP: tl.constexpr, BLOCK: tl.constexpr, RECORD_RANGE: tl.constexpr,
):
    """``Anderson.step`` for sample ``program_id(0)`` when it is active (``prev > tol``, K_b >= 2);
    a frozen sample is left as it is. ``RECORD_RANGE``: also the range of ``F - G`` it leaves
    (the shift of the next symmetric half-step, kernels/sinkhorn.py)."""
    b = tl.program_id(0).to(tl.int64)
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    tol = tl.load(tol_ptr)
    if (tl.load(prev_delta_ptr + b) > tol) & (kb >= 2):
        newest_phys = (head + M) % (M + 1)
        # pass 0: the scale fix c, mean_i 2^(x_i + c - (y_i - c)) = 1 (a max, then the sum)
        run_max = tl.full([BLOCK], float("-inf"), COMPUTE)
        for i0 in range(0, kb, BLOCK):
            rows = i0 + tl.arange(0, BLOCK)
            m = rows < kb
            d = tl.load(x_ptr + b * K + rows, mask=m, other=0.0) - tl.load(y_ptr + b * K + rows, mask=m, other=0.0)
            run_max = tl.maximum(run_max, tl.where(m, d, float("-inf")))
        top = tl.max(run_max, axis=0)
        total = tl.zeros([BLOCK], COMPUTE)
        for i0 in range(0, kb, BLOCK):
            rows = i0 + tl.arange(0, BLOCK)
            m = rows < kb
            d = tl.load(x_ptr + b * K + rows, mask=m, other=0.0) - tl.load(y_ptr + b * K + rows, mask=m, other=0.0)
            total += tl.where(m, tl.exp((d - top) * LN2), 0.0)
        c = -0.5 * (top + tl.log(tl.sum(total, axis=0) / kb.to(COMPUTE)) / LN2)
        # pass 1: the residual r = (y - c) - (x + c), its norms, the newest history entries
        sq = tl.zeros([BLOCK], COMPUTE)
        big = tl.zeros([BLOCK], COMPUTE)
        for i0 in range(0, kb, BLOCK):
            rows = i0 + tl.arange(0, BLOCK)
            m = rows < kb
            x, r = _shifted(x_ptr, y_ptr, b, rows, m, K, c)
            sq += r * r
            big = tl.maximum(big, tl.abs(r))
            tl.store(hx_ptr + (b * (M + 1) + newest_phys) * K + rows, x, mask=m)
            tl.store(hr_ptr + (b * (M + 1) + newest_phys) * K + rows, r, mask=m)
        delta = tl.max(big, axis=0) * LN2
        tl.store(next_delta_ptr + b, delta)
        norm = tl.sqrt(tl.sum(sq, axis=0))
        best = tl.load(best_ptr + b)
        count = tl.load(count_ptr + b)
        restart = norm > 2 * best
        count = tl.where(restart, 0, count)
        tl.store(best_ptr + b, tl.where(restart, norm, tl.minimum(best, norm)))
        count = tl.minimum(count + 1, M + 1)
        tl.store(count_ptr + b, count)
        if (delta <= tol) | (last != 0):  # converged (or out of budget): the pair (y - c, y - c)
            for i0 in range(0, kb, BLOCK):
                rows = i0 + tl.arange(0, BLOCK)
                m = rows < kb
                y = tl.load(y_ptr + b * K + rows, mask=m, other=0.0) - c
                tl.store(y_ptr + b * K + rows, y, mask=m)
                tl.store(x_ptr + b * K + rows, y, mask=m)
                store_lane(zb_ptr, zs_ptr, hs_ptr, b, rows, y, m, K, KP, T, TP, 0, SPLIT)
                store_lane(zb_ptr, zs_ptr, hs_ptr, b, rows, y, m, K, KP, T, TP, 1, SPLIT)
            if RECORD_RANGE:  # F = G
                tl.store(rng_ptr + 2 * b, tl.zeros((), COMPUTE))
                tl.store(rng_ptr + 2 * b + 1, tl.zeros((), COMPUTE))
        else:
            slots = tl.arange(0, MP)
            usable = (slots >= M + 1 - count) & (slots < M)
            # pass 2: the normal equations of the residual-difference fit, in float64
            A = tl.zeros([MP, MP], tl.float64)
            rhs = tl.zeros([MP], tl.float64)
            for i0 in range(0, kb, BLOCK):
                rows = i0 + tl.arange(0, BLOCK)
                m = rows < kb
                x, r = _shifted(x_ptr, y_ptr, b, rows, m, K, c)
                lo, hi = _history_rows(hr_ptr, b, slots, head, rows, m, K, r, M, MP)
                dR = tl.where(usable[:, None], hi - lo, 0.0).to(tl.float64)
                rhs += tl.sum(dR * r.to(tl.float64)[None, :], axis=1)
                for j in tl.static_range(M):
                    dRj = tl.sum(tl.where(slots[:, None] == j, dR, 0.0), axis=0)
                    A += tl.where(slots[None, :] == j, tl.sum(dR * dRj[None, :], axis=1)[:, None], 0.0)
            diag = slots[:, None] == slots[None, :]
            trace = tl.sum(tl.sum(tl.where(diag, A, 0.0), axis=1), axis=0)
            residual_sq = tl.sum(sq, axis=0).to(tl.float64)
            ridge = (tl.load(ridge_ptr) * trace + tl.load(ridge_ptr + 1) * residual_sq
                     + tl.full((), 2.2250738585072014e-308, tl.float64))  # fp64's tiny
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
            # pass 3: x + r - sum_j gamma_j (dX_j + dR_j)
            e_hi = tl.full([BLOCK], float("-inf"), COMPUTE)
            e_lo = tl.full([BLOCK], float("inf"), COMPUTE)
            for i0 in range(0, kb, BLOCK):
                rows = i0 + tl.arange(0, BLOCK)
                m = rows < kb
                x, r = _shifted(x_ptr, y_ptr, b, rows, m, K, c)
                xlo, xhi = _history_rows(hx_ptr, b, slots, head, rows, m, K, x, M, MP)
                rlo, rhi = _history_rows(hr_ptr, b, slots, head, rows, m, K, r, M, MP)
                d = tl.where(usable[:, None], (xhi - xlo) + (rhi - rlo), 0.0)
                nxt = x + r - tl.sum(d * gamma[:, None], axis=0)
                tl.store(x_ptr + b * K + rows, nxt, mask=m)
                store_lane(zb_ptr, zs_ptr, hs_ptr, b, rows, nxt, m, K, KP, T, TP, 1, SPLIT)
                if RECORD_RANGE:  # F - G with F = y = r + x + c (unchanged) and G = nxt
                    e = (r + x + c) - nxt
                    e_hi, e_lo = _widen_range(e_hi, e_lo, e, m)
            if RECORD_RANGE:
                _store_range(rng_ptr, b, e_hi, e_lo)


@triton.jit
def _shifted(x_ptr, y_ptr, b, rows, m, K, c):
    """``(x + c, (y - c) - (x + c))`` on ``rows`` (0 outside the sample's answers)."""
    x = tl.load(x_ptr + b * K + rows, mask=m, other=0.0)
    y = tl.load(y_ptr + b * K + rows, mask=m, other=0.0)
    x = tl.where(m, x + c, 0.0)
    return x, tl.where(m, (y - c) - x, 0.0)
