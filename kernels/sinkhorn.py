"""Batched log-domain Sinkhorn (Algorithm 1) on ``exp(-U / lam)``, U recomputed on the fly.

Notation (base 2, see ``pairwise_stats``): ``y_i`` scaled centred points, ``hs_i = ||y_i||^2/2``,
so ``-U_ij / lam * log2(e) = -hs_i - hs_j + <y_i, y_j>``. The potentials are kept unfolded in
base 2, ``F = log2(u)``, ``G = log2(v)``. Algorithm 1's half-steps are

    F_i = -LSE2_{j != i, j < K_b}(G_j - U_ij / lam * log2 e)
        = hs_i - LSE2_j(a_j + <y_i, y_j>),      a_j = G_j - hs_j   (rank-one part folded in)

and the same with F and G swapped: U is symmetric, so one kernel serves both half-steps (the
updates still alternate, exactly as in Algorithm 1).

One program owns ``BM`` rows of one sample and streams the sample's columns in tiles of ``BN``.
Nothing of size K x K is ever stored.

Shifted pass (``SHIFT``, the fast path). The row's log-sum-exp of the previous iteration is
known, ``S_i = hs_i - F_i(old)``, and it changes little between iterations, so it is used as a
fixed shift instead of a running max. Both the column term and the shift are folded into the
matrix product by augmenting the points with two lanes (``TP >= T + 2``):

    rows    [y_i, 1,   -S_i]
    columns [y_j, a_j,  1  ]   ->   x_ij = <y_i, y_j> + a_j - S_i        (one tl.dot)

so per pair the inner loop is one ``ex2`` (MUFU.EX2) and one add: no max, no rescaling, no
per-element load of ``a``. The product runs on tensor cores as fp32 split into three TF32
products (``v = v_big + v_small``, ``v_big`` rounded to TF32 by bit masking; the small*small term
is dropped: ~2^-22 relative, fp32-like; plain TF32 would cancel badly for close answers). The
split is written out rather than ``input_precision="tf32x3"`` because Triton's version adds a
NaN fix-up per element (for inf operands, which never occur here) and re-splits the loop-invariant
row operand every tile. ``USE_DOT=False`` uses T FFMAs per pair instead. If a row's sum leaves ``[SHIFT_LO, SHIFT_HI] = [2^-60, 2^100]`` (first
iterations, tiny lam), the block redoes its rows with the online pass, so the shift never costs
accuracy: below 2^-60 the flushed subnormal terms could matter, above 2^100 a term could overflow.

Online pass (fallback, or ``SHIFT=False``): running max + rescaled sum, as in flash attention,
with the max guarded so a row whose tiles are all -inf gives no NaN.

Masking: columns ``j >= K_b`` get ``a_j = -1e30`` (finite: the TF32 split of -inf would give
NaN), which ``ex2`` turns into 0; the diagonal is set to -inf only in the tiles that meet it.

Column split (``NSPLIT > 1``, shifted pass only): with few row blocks per SM the last wave of
programs leaves SMs idle (B = 32, K = 2500: 640 programs of 128 rows over 132 SMs x 2 is 2.4
waves). Phase 1 then runs ``(B, row blocks, NSPLIT)`` programs, each summing ``exp2`` over one
contiguous share of the column tiles into ``part[split, b, i]`` (with a fixed shift, partial sums
just add: no max to reconcile); phase 2 adds the NSPLIT partials in a fixed order
(deterministic), takes the online fallback where the window check fails, and writes the
potentials.

Convergence without a host sync per iteration: the caller keeps ``delta[it]``, the max |Δ log v|
of iteration it-1 per sample (natural log units; row 0 = +inf). A program does nothing unless
``delta[it][b] > tol`` and ``K_b >= 2``; the G half-step of iteration it atomically maxes its
rows' ``|G_new - G_old| * ln 2`` into ``delta[it + 1][b]``. A sample that stopped writes nothing,
its later deltas stay 0, so it stays frozen: exactly the CPU path's per-sample freezing (a sample
stops updating after the iteration in which max |Δg| <= tol). The host looks at ``delta`` only
every few iterations, to stop launching once every sample is frozen.
"""
import triton
import triton.language as tl

from .common import LN2, augmented_dot, split_tf32

PAD_LOGIT = tl.constexpr(-1e30)


@triton.jit
def tile_logits(y_b, hs_b, src_b, yi, yi_b, yi_s, s_i, rows, row_ok, j0, c_end, K,
                T: tl.constexpr, TP: tl.constexpr, BN: tl.constexpr, USE_DOT: tl.constexpr, COMPUTE: tl.constexpr):
    """The base-2 logits ``x_ij = <y_i, y_j> + a_j - S_i`` of one [BM, BN] tile, columns
    ``j0 .. j0 + BN`` below ``c_end`` (the others get PAD_LOGIT through a_j); returns (x, cols, col_ok).

    With USE_DOT the augmented lanes ``[y_i, 1, -S_i] . [y_j, a_j, 1]`` give the whole tile in one
    product (3xTF32 in fp32: small*big + big*small + big*big; finite operands, no NaN fix-up);
    otherwise an FFMA loop over the T lanes."""
    offs_t = tl.arange(0, TP)
    cols = j0 + tl.arange(0, BN)
    col_ok = cols < c_end
    a = tl.load(src_b + cols, mask=col_ok, other=0.0) - tl.load(hs_b + cols, mask=col_ok, other=0.0)
    a = tl.where(col_ok, a, PAD_LOGIT)
    if USE_DOT:
        yj = tl.load(y_b + offs_t[:, None] * K + cols[None, :], mask=(offs_t[:, None] < T) & col_ok[None, :],
                     other=0.0)
        yj = tl.where(offs_t[:, None] == T, a[None, :], tl.where(offs_t[:, None] == T + 1, 1.0, yj))
        x = augmented_dot(yi, yi_b, yi_s, yj, COMPUTE)
    else:
        x = a[None, :] - s_i[:, None]
        for t in tl.static_range(T):
            yi_t = tl.load(y_b + t * K + rows, mask=row_ok, other=0.0)
            yj_t = tl.load(y_b + t * K + cols, mask=col_ok, other=0.0)
            x += yi_t[:, None] * yj_t[None, :]
    return x, cols, col_ok


@triton.jit
def sinkhorn_half_step_kernel(
    y_ptr,  # [B, TP, K] scaled centred points (lanes t >= T are 0)
    hs_ptr,  # [B, K] ||y||^2 / 2
    nvalid_ptr,  # [B] int64 K_b
    src_ptr,  # [B, K] potentials of the other side (base 2, unfolded)
    dst_ptr,  # [B, K] potentials updated by this half-step (holds the previous ones)
    prev_delta_ptr,  # [B] max |Δ log v| of the previous iteration (+inf before the first)
    next_delta_ptr,  # [B] max |Δ log v| of this iteration (atomic max; only when WRITE_DELTA)
    part_ptr,  # [NSPLIT, B, K] partial row sums of the shifted pass (PHASE 1 writes, PHASE 2 reads)
    tol,
    K, NSPLIT,
    T: tl.constexpr, TP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    USE_DOT: tl.constexpr, SHIFT: tl.constexpr, WRITE_DELTA: tl.constexpr, COMPUTE: tl.constexpr,
    PHASE: tl.constexpr = 0, SHIFT_LO: tl.constexpr = 2.0 ** -60, SHIFT_HI: tl.constexpr = 2.0 ** 100,
):
    """PHASE 0: the whole half-step for BM rows. PHASE 1 (grid axis 2 = column split): the
    shifted pass over one of NSPLIT column ranges, partial sums to ``part``. PHASE 2: adds the
    partial sums, falls back to the online pass where needed, writes the potentials."""
    b = tl.program_id(0).to(tl.int64)
    i0 = tl.program_id(1) * BM
    kb = tl.load(nvalid_ptr + b).to(tl.int32)
    prev = tl.load(prev_delta_ptr + b)
    if (i0 < kb) & (kb >= 2) & (prev > tol):
        rows = i0 + tl.arange(0, BM)
        row_ok = rows < kb
        y_b = y_ptr + b * TP * K
        hs_b = hs_ptr + b * K
        src_b = src_ptr + b * K
        dst = dst_ptr + b * K + rows
        offs_t = tl.arange(0, TP)
        hs_i = tl.load(hs_b + rows, mask=row_ok, other=0.0)
        old = tl.load(dst, mask=row_ok, other=0.0)
        if SHIFT:
            s_i = hs_i - old  # the row's log-sum-exp in the previous iteration
        else:
            s_i = tl.zeros([BM], COMPUTE)
        yi = tl.load(y_b + offs_t[None, :] * K + rows[:, None], mask=(offs_t[None, :] < T) & row_ok[:, None],
                     other=0.0)
        yi = tl.where(offs_t[None, :] == T, 1.0, tl.where(offs_t[None, :] == T + 1, -s_i[:, None], yi))  # [BM, TP]
        if COMPUTE == tl.float32:  # TF32 split of the loop-invariant row operand: yi = yi_b + yi_s
            yi_b, yi_s = split_tf32(yi)
        else:  # fp64 uses one exact dot; the split operands are unused
            yi_b = yi
            yi_s = yi

        need_online = True
        if SHIFT:
            if PHASE == 2:  # the partial sums of the NSPLIT column ranges
                l_i = tl.zeros([BM], COMPUTE)
                for sp in range(0, NSPLIT):
                    l_i += tl.load(part_ptr + (sp * tl.num_programs(0) + b) * K + rows, mask=row_ok, other=0.0)
            else:
                c0 = 0
                c1 = kb
                if PHASE == 1:  # this program's share of the column tiles
                    per = tl.cdiv(tl.cdiv(kb, BN), NSPLIT) * BN
                    c0 = tl.program_id(2) * per
                    c1 = tl.minimum(kb, c0 + per)
                l_i = tl.zeros([BM], COMPUTE)
                for j0 in range(c0, c1, BN):
                    x, cols, col_ok = tile_logits(y_b, hs_b, src_b, yi, yi_b, yi_s, s_i, rows, row_ok, j0, c1, K,
                                                  T, TP, BN, USE_DOT, COMPUTE)
                    if (j0 < i0 + BM) & (i0 < j0 + BN):  # this tile meets the diagonal
                        x = tl.where(rows[:, None] == cols[None, :], float("-inf"), x)
                    l_i += tl.sum(tl.exp2(x), axis=1)
            if PHASE == 1:
                tl.store(part_ptr + (tl.program_id(2) * tl.num_programs(0) + b) * K + rows, l_i, mask=row_ok)
            else:
                ok = ((l_i >= SHIFT_LO) & (l_i <= SHIFT_HI)) | (rows >= kb)
                lse = tl.log2(tl.where(row_ok, l_i, 1.0))
                need_online = tl.min(ok.to(tl.int32), axis=0) == 0
        if PHASE != 1:
            if need_online:
                m_i = tl.full([BM], float("-inf"), COMPUTE)
                l_i = tl.zeros([BM], COMPUTE)
                for j0 in range(0, kb, BN):
                    x, cols, col_ok = tile_logits(y_b, hs_b, src_b, yi, yi_b, yi_s, s_i, rows, row_ok, j0, kb, K,
                                                  T, TP, BN, USE_DOT, COMPUTE)
                    x = tl.where(col_ok[None, :], x, float("-inf"))
                    if (j0 < i0 + BM) & (i0 < j0 + BN):
                        x = tl.where(rows[:, None] == cols[None, :], float("-inf"), x)
                    m_new = tl.maximum(m_i, tl.max(x, axis=1))
                    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
                    l_i = l_i * tl.exp2(m_i - m_use) + tl.sum(tl.exp2(x - m_use[:, None]), axis=1)
                    m_i = m_new
                lse = tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log2(tl.where(row_ok, l_i, 1.0))
            new = hs_i - (s_i + lse)
            if WRITE_DELTA:
                d = tl.where(row_ok, tl.abs(new - old), 0.0)
                tl.atomic_max(next_delta_ptr + b, tl.max(d, axis=0) * LN2)
            tl.store(dst, new, mask=row_ok)
