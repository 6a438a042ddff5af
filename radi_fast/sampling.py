"""RADI-L's partial-list sampler (sec. 3.3): hot list + rank-based cold list.

Conventions (shared by the pure-PyTorch sampler, the compiled op and the literal reference):

* **Teacher ranking.** Answers sorted by teacher score, descending; ties broken by the lower
  answer index first (a stable sort). Padding columns (``>= lengths[b]``) are never ranked.
* **Hot list.** The first ``hot`` answers of that ranking, in ranking order.
* **Cold list.** ``cold`` answers drawn without replacement from the *remaining* list (ranking
  positions ``hot + 1 .. L``, ``L`` the row's number of valid answers). The probability of an
  answer depends only on its 1-based rank ``r`` *within the remaining list* (``r = 1`` is the
  answer right after the hot list), which is how we read the paper's "k-th answer":

  - ``"exp"``:    ``p_r ∝ exp(-alpha * r)``
  - ``"zipf"``:   ``p_r ∝ r ** -alpha``
  - ``"random"``: ``p_r ∝ 1`` (``alpha`` unused)

  Draws are sequential sampling without replacement (each draw renormalises over the answers
  not drawn yet, i.e. a Plackett-Luce model on ``p``) and are returned in draw order. The
  pure-PyTorch path does it in one shot with the Gumbel-top-k trick: the ``cold`` largest keys
  ``log p_r + Gumbel`` are exactly such a sequential draw, in order.
* **Randomness.** ``generator`` (a ``torch.Generator``, the global RNG when None) is consumed
  only when ``cold > 0``; ``cold == 0`` is deterministic (just the hot list). The torch path
  draws one float64 uniform per remaining position, on the generator's device.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._validation import check_choice, check_int, check_lengths, check_positive, check_tensor

SAMPLING_SCHEMES = ("zipf", "exp", "random")
SAMPLER_BACKENDS = ("auto", "torch", "compiled")


# --------------------------------------------------------------------------------------------
# validation shared with radi_fast.listwise
# --------------------------------------------------------------------------------------------
def check_scores(scores, name: str, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """A 2-D floating tensor whose valid entries (columns < lengths[b]) are finite.

    Padding columns may hold anything (e.g. -inf or NaN): they are never read.
    """
    check_tensor(scores, name, 2, finite=False)
    if scores.numel() == 0:
        return scores
    finite = torch.isfinite(scores)
    if lengths is not None:
        columns = torch.arange(scores.shape[1], device=scores.device)
        finite = finite | (columns[None, :] >= lengths.to(scores.device)[:, None])
    if not bool(finite.all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf) among the valid answers")
    return scores


def check_list_sizes(hot, cold, n_answers: int, lengths: Optional[torch.Tensor]) -> Tuple[int, int]:
    """``hot`` and ``cold`` are non-negative ints with ``hot + cold`` <= every row's valid answers."""
    hot = check_int(hot, "hot")
    cold = check_int(cold, "cold")
    available = n_answers if lengths is None or lengths.numel() == 0 else int(lengths.min())
    if hot + cold > available:
        where = "the number of answers N" if lengths is None else "min(lengths)"
        raise ValueError(
            f"hot + cold must be <= {where} ({available}), got hot={hot} and cold={cold}"
        )
    return hot, cold


def teacher_ranking(scores: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[B, N] -> [B, N] answer indices by descending score, ties by lower index, padding last."""
    keys = scores
    if lengths is not None:
        columns = torch.arange(scores.shape[1], device=scores.device)
        padding = columns[None, :] >= lengths.to(scores.device)[:, None]
        keys = scores.masked_fill(padding, float("-inf"))  # valid scores are finite: padding sorts last
    # stable=True keeps equal scores in index order, which is the documented tie rule
    return torch.sort(keys, dim=1, descending=True, stable=True).indices


# --------------------------------------------------------------------------------------------
# sampling law
# --------------------------------------------------------------------------------------------
def rank_log_weights(n_remaining: int, scheme: str, alpha: float, *, dtype: torch.dtype = torch.float64,
                     device=None) -> torch.Tensor:
    """Unnormalised log-probabilities ``log p_r`` of ranks ``r = 1..n_remaining`` (1-D tensor).

    ``"exp"``: ``-alpha * r``; ``"zipf"``: ``-alpha * log r``; ``"random"``: 0. Finite for any
    ``alpha >= 0``, so even a very peaked law never produces ``-inf`` keys.
    """
    check_choice(scheme, "scheme", SAMPLING_SCHEMES)
    alpha = check_positive(alpha, "alpha", allow_zero=True)
    ranks = torch.arange(1, n_remaining + 1, dtype=dtype, device=device)
    if scheme == "exp":
        return -alpha * ranks
    if scheme == "zipf":
        return -alpha * torch.log(ranks)
    return torch.zeros_like(ranks)


def rank_log_probs(n_remaining: int, scheme: str, alpha: float, *, dtype: torch.dtype = torch.float64,
                   device=None) -> torch.Tensor:
    """Normalised log-probabilities ``log p_r``, ``r = 1..n_remaining``, of the first cold draw.

    ``p_r`` is the law of the rank (within the remaining list) of the first cold answer; later
    draws renormalise it over the ranks not drawn yet.
    """
    log_w = rank_log_weights(n_remaining, scheme, alpha, dtype=dtype, device=device)
    return torch.log_softmax(log_w, dim=0) if n_remaining else log_w


# Alias under the sampler specification's name; the values are log-probabilities, not weights.
rank_weights = rank_log_probs


def _generator_device(generator: Optional[torch.Generator], fallback: torch.device) -> torch.device:
    return fallback if generator is None else generator.device


def gumbel_noise(shape, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log u)`` in float64, drawn on the generator's device.

    ``u`` is clamped to the smallest positive double so that ``u = 0`` (probability 2^-53 per
    draw) gives a large negative but finite key instead of ``-inf``.
    """
    u = torch.rand(shape, dtype=torch.float64, generator=generator,
                   device=_generator_device(generator, device))
    u = u.clamp_min_(torch.finfo(torch.float64).tiny)
    return u.log_().neg_().log_().neg_().to(device)  # -log(-log u), in place


# --------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------
def partial_list_torch(scores: torch.Tensor, hot: int, cold: int, scheme: str = "zipf", alpha: float = 1.0,
                       generator: Optional[torch.Generator] = None,
                       lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pure-PyTorch partial-list sampler: ``[B, N]`` teacher scores -> ``[B, hot + cold]`` indices.

    Columns ``0..hot-1`` are the teacher's top-``hot`` answers in ranking order (ties by lower
    index); columns ``hot..`` are ``cold`` answers drawn without replacement from the rest of the
    ranking with ``p_r`` by rank within the remaining list (see the module docstring), in draw
    order. Vectorised over rows: one stable sort, one Gumbel draw, one ``topk``.

    Args:
        scores: ``[B, N]`` floating teacher scores (no gradient is needed or kept).
        hot, cold: sizes of the hot and cold lists; ``hot + cold <= N`` (``<= min(lengths)``).
        scheme: ``"zipf"``, ``"exp"`` or ``"random"``.
        alpha: smoothing coefficient ``>= 0`` of the Exp/Zipf laws.
        generator: source of randomness (global RNG when None); untouched when ``cold == 0``.
        lengths: optional ``[B]`` ints, valid answers per row; columns ``>= lengths[b]`` are
            padding and never sampled.
    """
    hot, cold, alpha, lengths = _check_sampler_args(scores, hot, cold, scheme, alpha, lengths)
    return _partial_list_torch(scores.detach(), hot, cold, scheme, alpha, generator, lengths)


def _check_sampler_args(scores, hot, cold, scheme, alpha, lengths):
    """Validate the sampler's arguments; returns ``(hot, cold, alpha, lengths as int64 or None)``."""
    check_tensor(scores, "scores", 2, finite=False)
    lengths = check_lengths(lengths, scores.shape[0], scores.shape[1])
    check_scores(scores, "scores", lengths)
    check_choice(scheme, "scheme", SAMPLING_SCHEMES)
    alpha = check_positive(alpha, "alpha", allow_zero=True)
    hot, cold = check_list_sizes(hot, cold, scores.shape[1], lengths)
    return hot, cold, alpha, lengths


def _partial_list_torch(scores, hot, cold, scheme, alpha, generator, lengths):
    """Unchecked body of :func:`partial_list_torch` (arguments already validated)."""
    order = teacher_ranking(scores, lengths)
    hot_idx = order[:, :hot]
    if cold == 0:
        return hot_idx.contiguous()
    remaining = order[:, hot:]  # [B, N - hot], remaining ranks r = 1..N-hot
    n_remaining = remaining.shape[1]
    keys = rank_log_weights(n_remaining, scheme, alpha, device=scores.device)[None, :] \
        + gumbel_noise(remaining.shape, generator, scores.device)
    if lengths is not None:
        # ranks beyond the row's valid answers are padding: never drawn (cold <= L - hot holds)
        ranks = torch.arange(1, n_remaining + 1, device=scores.device)
        keys = keys.masked_fill(ranks[None, :] > (lengths.to(scores.device) - hot)[:, None], float("-inf"))
    # Gumbel-top-k: the `cold` largest keys, in descending order, are a sequential draw
    # without replacement from p_r, in draw order (ties have probability zero).
    drawn_ranks = torch.topk(keys, cold, dim=1, largest=True, sorted=True).indices
    return torch.cat([hot_idx, remaining.gather(1, drawn_ranks)], dim=1)


def _compiled_sampler():
    """The compiled-op module when it is importable and built, else None.

    When the op module exists but its extension is not built, it warns once per process
    (``radi_fast.ops.sampler.warn_fallback_once``) before the torch path takes over.
    """
    try:
        from .ops import sampler as op_module
    except ImportError:  # module not written/installed: the torch path is the fallback
        return None
    if op_module.compiled_available():
        return op_module
    warn = getattr(op_module, "warn_fallback_once", None)
    if warn is not None:
        warn()
    return None


def sample_partial_list(scores: torch.Tensor, hot: int, cold: int, scheme: str = "zipf", alpha: float = 1.0,
                        generator: Optional[torch.Generator] = None, lengths: Optional[torch.Tensor] = None,
                        *, backend: str = "auto") -> torch.Tensor:
    """Partial-list sampler with dispatch: the compiled op when available, else the torch path.

    Same contract as :func:`partial_list_torch` (hot list in ranking order, then the cold draws
    in draw order; ``[B, hot + cold]`` int64 answer indices). ``backend``: ``"auto"`` (compiled
    op if built, else torch), ``"torch"`` or ``"compiled"`` (error when not built).

    The compiled op is counter-based (Philox): it gets a ``(seed, offset)`` pair drawn from
    ``generator`` (global RNG when None) with ``torch.randint(0, 2**62, (2,))``, so the two paths
    consume the generator differently and draw different (equally distributed) lists for the same
    seed. ``cold == 0`` consumes no randomness on either path.
    """
    check_choice(backend, "backend", SAMPLER_BACKENDS)
    hot, cold, alpha, lengths = _check_sampler_args(scores, hot, cold, scheme, alpha, lengths)
    scores = scores.detach()
    op_module = None if backend == "torch" or cold == 0 else _compiled_sampler()
    if backend == "compiled" and op_module is None and cold > 0:
        raise ValueError("backend='compiled' but the compiled sampler op is not available")
    if op_module is None:
        return _partial_list_torch(scores, hot, cold, scheme, alpha, generator, lengths)
    seed, offset = torch.randint(0, 2**62, (2,), generator=generator,
                                 device=_generator_device(generator, torch.device("cpu"))).tolist()
    return op_module.partial_list_op(scores, hot, cold, scheme, alpha, seed, offset, lengths)
