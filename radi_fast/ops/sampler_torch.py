"""The pure-PyTorch partial-list sampler: the same draws as the compiled op ``radi_fast._C``.

RADI-L's hot + cold sub-lists (docs/sampler.md) drawn in vectorised PyTorch with the compiled
op's exact arithmetic: Philox4x32-10 with the same counter scheme and key words (``csrc/philox.h``),
the same 52-bit uniforms, the same portable logarithm (``+ - * /`` only, each a separately rounded
float64 operation, as the C++ code compiled with ``-ffp-contract=off``) and the same Gumbel keys.
So for the same ``(seed, offset)`` it returns bit-identical sub-lists to
``torch.ops.radi_fast.partial_list`` (tests/test_sampler_torch.py), on any device, and results
never depend on whether the extension was built.

It also does what the compiled op does not: arbitrary [B, N] masks of valid answers, and rows
with fewer valid answers than ``hot + cold`` (each row keeps what it has: hot first, then cold;
a validity mask says which output slots are used). All without a host synchronisation: the op
``torch.ops.radi_fast.partial_list_masked`` takes ``(seed, offset)`` as a tensor and is opaque to
``torch.compile``.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .._validation import valid_mask

IntLike = Union[int, torch.Tensor]

M32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
TWO_POW_MINUS_52 = 2.0 ** -52
OP_NAME = "radi_fast::partial_list_masked"


# ----------------------------------------------------------------------------- Philox4x32-10
def _mul_hi_lo(m: int, c: IntLike) -> Tuple[IntLike, IntLike]:
    """``(hi, lo)`` 32-bit words of the 64-bit product ``m * c`` (``m`` a uint32 constant, ``c``
    an int or an int64 tensor holding uint32), in int64 without overflow: ``m = m_hi 2^16 +
    m_lo``, so both partial products stay below 2^48 (fresh tensors, then in-place steps)."""
    if not isinstance(c, torch.Tensor):
        p = m * c
        return p >> 32, p & M32
    t_hi = c * (m >> 16)
    t_lo = c * (m & 0xFFFF)
    hi = (t_lo >> 16).add_(t_hi).bitwise_right_shift_(16)
    lo = t_hi.bitwise_and_(0xFFFF).bitwise_left_shift_(16).add_(t_lo).bitwise_and_(M32)
    return hi, lo


def philox4x32_10(c0: IntLike, c1: IntLike, c2: IntLike, c3: IntLike, k0: IntLike, k1: IntLike):
    """Philox4x32-10 on int64 tensors (or ints) holding uint32 words, broadcasting; returns the
    four output words. ``csrc/philox.h: philox4x32_10``."""
    for _ in range(10):
        hi0, lo0 = _mul_hi_lo(PHILOX_M0, c0)
        hi1, lo1 = _mul_hi_lo(PHILOX_M1, c2)
        c0, c1, c2, c3 = (hi1 ^ c1) ^ k0, lo1, (hi0 ^ c3) ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & M32
        k1 = (k1 + PHILOX_W1) & M32
    return c0, c1, c2, c3


def _words(value: IntLike) -> Tuple[IntLike, IntLike]:
    """A 64-bit seed/offset (int, or int64 tensor) as its (low, high) uint32 words."""
    return value & M32, (value >> 32) & M32


def philox_bits52(seed: IntLike, offset: IntLike, rows: torch.Tensor, n_pos: int) -> torch.Tensor:
    """52 random bits for positions ``0 .. n_pos - 1`` of every row in ``rows`` ([R] int64):
    [R, n_pos] int64. Key ``(seed lo, seed hi)``, counter ``(pos >> 1, row, offset lo, offset hi)``;
    even positions use output words (0, 1), odd ones (2, 3); ``bits = (hi << 20) | (lo >> 12)``."""
    k0, k1 = _words(seed)
    c2, c3 = _words(offset)
    blocks = torch.arange((n_pos + 1) // 2, dtype=torch.int64, device=rows.device)
    c0 = blocks[None, :].expand(rows.shape[0], blocks.shape[0])
    o0, o1, o2, o3 = philox4x32_10(c0, rows.to(torch.int64)[:, None], c2, c3, k0, k1)
    even = (o1 << 20) | (o0 >> 12)
    odd = (o3 << 20) | (o2 >> 12)
    return torch.stack((even, odd), dim=2).reshape(rows.shape[0], -1)[:, :n_pos]


def bits52_to_uniform(bits: torch.Tensor) -> torch.Tensor:
    """``u = (bits + 1/2) 2^-52``, exactly, in ``[2^-53, 1 - 2^-53]``."""
    return (bits.to(torch.float64) + 0.5) * TWO_POW_MINUS_52


def philox_uniforms(seed: IntLike, offset: IntLike, row: int, m: int) -> torch.Tensor:
    """The uniforms of ranks ``1 .. m`` of one row (the compiled ``_uniforms`` test helper)."""
    rows = torch.tensor([row], dtype=torch.int64)
    return bits52_to_uniform(philox_bits52(seed, offset, rows, m + 1)[0, 1:])


# ----------------------------------------------------------------------------- portable log
_LN2_HI = float.fromhex("0x1.62e42feep-1")
_LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
_SQRT2 = float.fromhex("0x1.6a09e667f3bcdp+0")
_LOG_POLY = [float.fromhex(h) for h in (
    "0x1.642c8590b2164p-5", "0x1.8618618618618p-5", "0x1.af286bca1af28p-5", "0x1.e1e1e1e1e1e1ep-5",
    "0x1.1111111111111p-4", "0x1.3b13b13b13b14p-4", "0x1.745d1745d1746p-4", "0x1.c71c71c71c71cp-4",
    "0x1.2492492492492p-3", "0x1.999999999999ap-3", "0x1.5555555555555p-2")]  # 1/23, 1/21, ..., 1/3
_MANTISSA = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000


def portable_log(x: torch.Tensor) -> torch.Tensor:
    """``csrc/philox.h: portable_log`` on a float64 tensor, operation for operation (every
    ``+ - * /`` a separate, correctly rounded float64 op), so bit-identical to the C++ and CUDA
    code. Positive finite inputs (normal or subnormal); -inf for 0 and negative numbers, +inf
    for +inf, NaN for NaN."""
    bits = x.view(torch.int64)
    subnormal = (bits >> 52) == 0  # also +0.0, handled below
    xs = torch.where(subnormal, x * 2.0 ** 54, x)
    b = xs.view(torch.int64)
    k = (b >> 52).sub_(1023).sub_(subnormal.to(torch.int64) * 54)
    m = b.bitwise_and(_MANTISSA).bitwise_or_(_ONE_BITS).view(torch.float64)
    big = m > _SQRT2
    m = torch.where(big, m * 0.5, m)
    k.add_(big.to(torch.int64))
    f = m.sub_(1.0)  # exact (Sterbenz)
    s = f / (f + 2.0)
    z = s * s
    p = torch.full_like(z, _LOG_POLY[0])
    for c in _LOG_POLY[1:]:
        p.mul_(z).add_(c)  # two roundings, as dadd(dmul(p, z), c)
    two_s = s.add_(s)
    log_m = (two_s * z).mul_(p).add_(two_s)  # dadd(two_s, dmul(dmul(two_s, z), p))
    dk = k.to(torch.float64)
    out = (dk * _LN2_LO).add_(log_m).add_(dk.mul_(_LN2_HI))  # dadd(dmul(dk, hi), dadd(log_m, dmul(dk, lo)))
    special = torch.where(x == x, torch.full_like(x, float("-inf")), x)  # x <= 0: -inf; NaN: NaN
    out = torch.where(x > 0, out, special)
    return torch.where(x == float("inf"), x, out)


# ----------------------------------------------------------------------------- laws and keys
def rank_log_weights(n_remaining: int, scheme: str, alpha: float, *, dtype: torch.dtype = torch.float64,
                     device=None) -> torch.Tensor:
    """Unnormalised log-probabilities ``log p_r`` of ranks ``r = 1..n_remaining`` (1-D tensor).

    ``"exp"``: ``-alpha * r``; ``"zipf"``: ``-alpha * log r``; ``"random"``: 0. Finite for any
    ``alpha >= 0``: a law so peaked that ``-alpha r`` overflows saturates at the most negative
    finite number of ``dtype``, so no key is ever ``-inf``; the ranks it saturates tie, and ties
    go to the lower rank (the limit of the law: the deterministic top ranks). In float64 these
    are the compiled op's values bit for bit (its portable logarithm, the same saturation).
    """
    return _saturate(_rank_log_weights64(n_remaining, scheme, alpha, device, first=1)).to(dtype).clamp_min(
        -torch.finfo(dtype).max)


def _saturate(log_w: torch.Tensor) -> torch.Tensor:
    """``-inf`` (an overflowing ``-alpha r``) -> the most negative finite double (csrc/philox.h)."""
    return log_w.clamp_min(-torch.finfo(torch.float64).max)


def _rank_log_weights64(n_remaining: int, scheme: str, alpha: float, device, first: int) -> torch.Tensor:
    """float64 ``log p_r`` of ranks 1..n_remaining, for "exp" relative to rank ``1 - first``'s
    (``first = 1``: ``-alpha r``, the compiled op's; ``first = 0``: ``-alpha (r - 1)``)."""
    ranks = torch.arange(1, n_remaining + 1, dtype=torch.float64, device=device)
    if scheme == "exp":
        return -((ranks if first else ranks - 1) * alpha)
    if scheme == "zipf":
        return -(portable_log(ranks) * alpha)
    return torch.zeros_like(ranks)


def rank_log_probs(n_remaining: int, scheme: str, alpha: float, *, dtype: torch.dtype = torch.float64,
                   device=None) -> torch.Tensor:
    """Normalised log-probabilities ``log p_r``, ``r = 1..n_remaining``, of the first cold draw.

    ``p_r`` is the law of the rank (within the remaining list) of the first cold answer; later
    draws renormalise it over the ranks not drawn yet.
    """
    # relative to rank 1 (-alpha (r - 1) for "exp"): the law of an alpha whose -alpha r would
    # saturate everywhere is still p_1 = 1, not uniform
    log_w = _saturate(_rank_log_weights64(n_remaining, scheme, alpha, device, first=0))
    out = torch.log_softmax(log_w, dim=0) if n_remaining else log_w
    return out.to(dtype).clamp_min(-torch.finfo(dtype).max)


def cold_keys(scheme: str, alpha: float, seed: IntLike, offset: IntLike, rows: torch.Tensor, m: int) -> torch.Tensor:
    """Gumbel keys ``log p_r - log(-log u_r)`` of ranks ``r = 1 .. m`` for every row: [R, m]
    float64, bit-identical to the compiled op's ``cold_key`` (``csrc/philox.h``)."""
    u = bits52_to_uniform(philox_bits52(seed, offset, rows, m + 1)[:, 1:])
    return rank_log_weights(m, scheme, alpha, device=rows.device)[None, :] - portable_log(-portable_log(u))


def gumbel_noise(shape, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log u)`` in float64 from ``generator`` (not used by the
    sampler any more: kept for callers that want torch-RNG Gumbel noise), drawn on the
    generator's device; ``u`` clamped to the smallest positive double."""
    u = torch.rand(shape, dtype=torch.float64, generator=generator,
                   device=device if generator is None else generator.device)
    u = u.clamp_min_(torch.finfo(torch.float64).tiny)
    return u.log_().neg_().log_().neg_().to(device)  # -log(-log u), in place


# ----------------------------------------------------------------------------- the sampler
def teacher_ranking(scores: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[B, N] -> [B, N] answer indices by descending score, ties by lower index (``-0.0 == +0.0``),
    padding last. ``lengths``: None, [B] numbers of valid answers or a [B, N] bool mask of them
    (padding may hold NaN)."""
    keys = scores + 0.0  # -0.0 -> +0.0 (a CUDA radix sort would order them by their bits)
    mask = valid_mask(lengths, scores.shape[0], scores.shape[1], scores.device)
    if mask is not None:
        keys = keys.masked_fill(~mask, float("-inf"))  # valid scores are finite: padding sorts last
    # stable=True keeps equal scores in index order, which is the documented tie rule
    return torch.sort(keys, dim=1, descending=True, stable=True).indices


def _seed_words(seed_offset: torch.Tensor, device: torch.device):
    """``(seed, offset)`` for the Philox key and counter: 0-dim int64 tensors on ``device`` (no
    host read), or Python ints read from a tensor on another device (a CPU tensor: no device
    synchronisation; under CUDA-graph capture they are fixed at capture)."""
    if seed_offset.device == device:
        return seed_offset[0], seed_offset[1]
    seed, offset = seed_offset.tolist()
    return seed, offset


def partial_lists(scores: torch.Tensor, valid: Optional[torch.Tensor], hot: int, cold: int, scheme: str,
                  alpha: float, seed_offset: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hot + cold sub-lists: ``(ids [B, hot + cold] int64, used [B, hot + cold] bool)``.

    ``valid``: None, [B] lengths or a [B, N] bool mask; row b has ``L_b`` valid answers. Slots
    ``0 .. min(hot, L_b) - 1``: the top of the teacher ranking; then ``min(cold, L_b - hot)`` cold
    draws (the Gumbel-top-k of the Philox keys of ranks ``1 .. L_b - hot``, in draw order).
    ``used`` is False on the slots a short row cannot fill (their ids are arbitrary columns).
    Needs ``hot + cold <= N``. Rows with ``L_b >= hot + cold`` equal the compiled op's output.
    """
    B, N = scores.shape
    device = scores.device
    order = teacher_ranking(scores, valid)
    n_valid = torch.full((B,), N, dtype=torch.int64, device=device) if valid is None else (
        valid.to(device=device, dtype=torch.int64) if valid.dim() == 1 else valid.sum(dim=1))
    slots = torch.arange(hot + cold, device=device)
    hot_used = slots[None, :hot] < n_valid[:, None]
    ids = order[:, :hot]
    if cold == 0:
        return ids.contiguous(), hot_used
    m = N - hot  # >= every row's M_b = L_b - hot
    seed, offset = _seed_words(seed_offset.to(torch.int64), device)
    m_b = (n_valid - hot).clamp(min=0)
    drawn = cold_ranks(scheme, alpha, seed, offset, m, m_b, cold)
    cold_used = slots[None, :cold] < m_b[:, None]
    return torch.cat([ids, order[:, hot:].gather(1, drawn)], dim=1), torch.cat([hot_used, cold_used], dim=1)


# Extra candidates of the CPU shortcut in cold_ranks, and the bound on |approximate - exact key|
# it relies on (torch.log and the portable log are both within a few ulp of log; the keys are
# differences of such values of magnitude < 40 + |log p_r|): 1e-11 relative is far above it.
CANDIDATE_MARGIN = 8
KEY_ERROR = 1e-11


def top_keys_lower_rank_first(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Columns of the ``k`` largest keys of each row, in decreasing key order, ties to the lower
    column (the compiled op's ``key_before``; ``torch.topk`` orders ties arbitrarily). Ties occur
    where a very peaked law saturates its log weights (:func:`rank_log_weights`). O(m) per row:
    one ``topk`` for the k-th key, then the tied keys at it are taken lowest column first."""
    B, m = keys.shape
    if k == 0 or m == 0:
        return keys.new_zeros(B, 0, dtype=torch.int64)
    kth = torch.topk(keys, k, dim=1, largest=True, sorted=True).values[:, -1:]
    above = keys > kth
    tied = keys == kth
    need = k - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (torch.cumsum(tied, dim=1) <= need))  # exactly k per row
    columns = torch.arange(m, 0, -1, device=keys.device)  # m - column: larger for lower columns
    picked = torch.topk(torch.where(chosen, columns, 0), k, dim=1, sorted=True).indices  # ascending columns
    order = torch.sort(keys.gather(1, picked), dim=1, descending=True, stable=True).indices
    return picked.gather(1, order)


def cold_ranks(scheme: str, alpha: float, seed: IntLike, offset: IntLike, m: int, m_b: torch.Tensor,
               cold: int) -> torch.Tensor:
    """0-based ranks [B, cold] of the cold draws (Gumbel-top-k of ranks ``1 .. m_b[b]``, in draw
    order; ranks past ``m_b[b]`` only where a row has fewer than ``cold``).

    The exact keys (portable logarithm, ~40 float64 operations each) are only needed where they
    decide the top ``cold``. On the CPU the keys are first approximated with ``torch.log``; the
    exact keys of the best ``cold + CANDIDATE_MARGIN`` candidates then decide, and a row keeps
    that result when the candidates' cut provably lies below its ``cold``-th exact key (the
    approximation error is below KEY_ERROR); the rare others are recomputed exactly in full.
    That check reads on the host, so CUDA tensors take the full exact path (no synchronisation).
    """
    B, device = m_b.shape[0], m_b.device
    rows = torch.arange(B, dtype=torch.int64, device=device)
    u = bits52_to_uniform(philox_bits52(seed, offset, rows, m + 1)[:, 1:])  # ranks 1 .. m
    log_w = rank_log_weights(m, scheme, alpha, device=device)[None, :]
    beyond = torch.arange(1, m + 1, device=device)[None, :] > m_b[:, None]  # never drawn

    def exact(uu, lw, out_of_range):
        return (lw - portable_log(-portable_log(uu))).masked_fill_(out_of_range, float("-inf"))

    n_cand = cold + CANDIDATE_MARGIN
    if device.type != "cpu" or n_cand >= m:
        keys = exact(u, log_w, beyond)
        return top_keys_lower_rank_first(keys, cold)
    approx = (log_w - torch.log(-torch.log(u))).masked_fill_(beyond, float("-inf"))
    cand_keys, cand = torch.topk(approx, n_cand, dim=1, largest=True, sorted=True)
    # the candidates in rank order, so that a stable sort gives ties to the lower rank
    cand = torch.sort(cand, dim=1).values
    keys = exact(u.gather(1, cand), log_w.expand(B, m).gather(1, cand), beyond.gather(1, cand))
    top_keys, top = torch.sort(keys, dim=1, descending=True, stable=True)
    top_keys, top = top_keys[:, :cold], top[:, :cold]
    drawn = cand.gather(1, top)
    cut, kth = cand_keys[:, -1], top_keys[:, -1]
    tolerance = KEY_ERROR * (1.0 + torch.maximum(cut.abs(), kth.abs()).nan_to_num(posinf=0.0))
    proven = (cut == float("-inf")) | (cut + 2 * tolerance < kth)
    if not bool(proven.all()):  # the CPU: a host read costs nothing here
        redo = torch.nonzero(~proven).flatten()
        full = exact(u[redo], log_w, beyond[redo])
        drawn[redo] = top_keys_lower_rank_first(full, cold)
    return drawn


@torch.library.custom_op(OP_NAME, mutates_args=())
def partial_list_masked_op(scores: torch.Tensor, valid: Optional[torch.Tensor], hot: int, cold: int, scheme: str,
                           alpha: float, seed_offset: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`partial_lists` as an op: opaque to ``torch.compile`` (no graph break, and the
    float64 key arithmetic is never refused into fused, contracted kernels), any device."""
    return partial_lists(scores, valid, hot, cold, scheme, alpha, seed_offset)


@partial_list_masked_op.register_fake
def _partial_list_masked_fake(scores, valid, hot, cold, scheme, alpha, seed_offset):
    B = scores.shape[0]
    return (scores.new_empty((B, hot + cold), dtype=torch.int64),
            scores.new_empty((B, hot + cold), dtype=torch.bool))


def draw_seed_offset(generator: Optional[torch.Generator]) -> torch.Tensor:
    """The ``(seed, offset)`` pair of one sampler call, ``torch.randint(0, 2**62, (2,))`` from
    ``generator`` on its device (the global CPU generator when None): int64 [2]."""
    device = torch.device("cpu") if generator is None else generator.device
    return torch.randint(0, 2**62, (2,), generator=generator, device=device)


def partial_list_torch(scores, hot, cold, scheme, alpha, generator, lengths):
    """``[B, N]`` scores -> ``[B, hot + cold]`` answer ids (hot list, then cold draws in draw order),
    with the compiled op's draws for the ``(seed, offset)`` drawn from ``generator`` (none when
    ``cold == 0``). Arguments already validated (``radi_fast.sampling``): ``hot + cold <= L_b``."""
    seed_offset = draw_seed_offset(generator) if cold > 0 else torch.zeros(2, dtype=torch.int64)
    return partial_list_masked_op(scores, lengths, hot, cold, scheme, alpha, seed_offset)[0]
