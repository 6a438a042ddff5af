"""RADI-L's partial-list sampler (sec. 3.3): the hot list + a rank-sampled cold list.

The public faces: argument checks and the choice between the compiled op (``ops/sampler.py``,
``radi_fast._C``) and the pure-PyTorch sampler (``ops/sampler_torch.py``). Conventions (teacher
ranking and ties, ranks within the remaining list, the Exp/Zipf/random laws, randomness): see
docs/sampler.md.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._constants import SAMPLER_BACKENDS, SAMPLING_SCHEMES
from ._validation import check_choice, check_lengths, check_list_sizes, check_positive, check_scores, check_tensor
from .ops import sampler as compiled_sampler
from .ops import sampler_torch
from .ops.sampler_torch import gumbel_noise, teacher_ranking  # noqa: F401  (public helpers)

__all__ = ["SAMPLING_SCHEMES", "gumbel_noise", "partial_list_torch", "rank_log_probs", "rank_log_weights",
           "sample_partial_list", "teacher_ranking"]


def rank_log_weights(n_remaining: int, scheme: str, alpha: float, *, dtype: torch.dtype = torch.float64,
                     device=None) -> torch.Tensor:
    """Unnormalised ``log p_r`` of ranks ``r = 1..n_remaining``: "exp" ``-alpha r``, "zipf"
    ``-alpha log r``, "random" 0 (finite for any ``alpha >= 0``)."""
    check_choice(scheme, "scheme", SAMPLING_SCHEMES)
    alpha = check_positive(alpha, "alpha", allow_zero=True)
    return sampler_torch.rank_log_weights(n_remaining, scheme, alpha, dtype=dtype, device=device)


def rank_log_probs(n_remaining: int, scheme: str, alpha: float, *, dtype: torch.dtype = torch.float64,
                   device=None) -> torch.Tensor:
    """Normalised ``log p_r``, the law of the first cold draw's rank (later draws renormalise)."""
    check_choice(scheme, "scheme", SAMPLING_SCHEMES)
    alpha = check_positive(alpha, "alpha", allow_zero=True)
    return sampler_torch.rank_log_probs(n_remaining, scheme, alpha, dtype=dtype, device=device)


def _check_sampler_args(scores, hot, cold, scheme, alpha, lengths):
    """Returns ``(hot, cold, alpha, lengths as int64 or None)``; ``ValueError`` naming the argument."""
    check_tensor(scores, "scores", 2, finite=False)
    lengths = check_lengths(lengths, scores.shape[0], scores.shape[1])
    check_scores(scores, "scores", lengths)
    check_choice(scheme, "scheme", SAMPLING_SCHEMES)
    alpha = check_positive(alpha, "alpha", allow_zero=True)
    hot, cold = check_list_sizes(hot, cold, scores.shape[1], lengths)
    return hot, cold, alpha, lengths


def partial_list_torch(scores: torch.Tensor, hot: int, cold: int, scheme: str = "zipf", alpha: float = 1.0,
                       generator: Optional[torch.Generator] = None,
                       lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The pure-PyTorch sampler: ``[B, N]`` teacher scores -> ``[B, hot + cold]`` int64 answer ids.

    Columns ``0..hot-1``: the teacher's top ``hot`` in ranking order (ties by lower index); then
    ``cold`` draws without replacement from the rest, ``p_r`` by rank within the remaining list,
    in draw order. ``hot + cold <= N`` (``<= min(lengths)``); ``generator`` (global RNG when
    None) is untouched when ``cold == 0``; columns ``>= lengths[b]`` are never sampled.
    """
    hot, cold, alpha, lengths = _check_sampler_args(scores, hot, cold, scheme, alpha, lengths)
    return sampler_torch.partial_list_torch(scores.detach(), hot, cold, scheme, alpha, generator, lengths)


def sample_partial_list(scores: torch.Tensor, hot: int, cold: int, scheme: str = "zipf", alpha: float = 1.0,
                        generator: Optional[torch.Generator] = None, lengths: Optional[torch.Tensor] = None,
                        *, backend: str = "auto") -> torch.Tensor:
    """:func:`partial_list_torch`'s contract, on the compiled op when it is built.

    ``backend``: "auto" (compiled op if built, else torch with a one-time warning), "torch" or
    "compiled" (``ValueError`` when not built). The compiled op is counter-based (Philox): it takes
    a ``(seed, offset)`` pair drawn from ``generator`` with ``torch.randint(0, 2**62, (2,))``, so
    the two paths consume the generator differently and draw different (equally distributed)
    lists for the same seed. ``cold == 0`` consumes no randomness on either path.
    """
    check_choice(backend, "backend", SAMPLER_BACKENDS)
    hot, cold, alpha, lengths = _check_sampler_args(scores, hot, cold, scheme, alpha, lengths)
    scores = scores.detach()
    use_compiled = backend != "torch" and cold > 0 and compiled_sampler.compiled_available()
    if backend == "compiled" and not use_compiled and cold > 0:
        raise ValueError("backend='compiled' but the compiled sampler op is not available")
    if not use_compiled:
        if backend == "auto" and cold > 0:
            compiled_sampler.warn_fallback_once()
        return sampler_torch.partial_list_torch(scores, hot, cold, scheme, alpha, generator, lengths)
    device = torch.device("cpu") if generator is None else generator.device
    seed, offset = torch.randint(0, 2**62, (2,), generator=generator, device=device).tolist()
    return compiled_sampler.partial_list_op(scores, hot, cold, scheme, alpha, seed, offset, lengths)
