"""RADI-L's partial-list sampler (sec. 3.3): the hot list + a rank-sampled cold list.

The public faces: argument checks and the choice between the compiled op (``ops/sampler.py``,
``radi_fast._C``) and the pure-PyTorch sampler (``ops/sampler_torch.py``). Both draw the same
sub-lists for the same ``(seed, offset)`` (Philox4x32-10, the same keys bit for bit), so the
choice is only one of speed and of what each supports (masks, short rows, tensors as seeds).
Conventions (teacher ranking and ties, ranks within the remaining list, the Exp/Zipf/random
laws, randomness): see docs/sampler.md.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._constants import SAMPLER_BACKENDS, SAMPLING_SCHEMES
from ._validation import (
    check_choice,
    check_generator,
    check_lengths,
    check_list_sizes,
    check_positive,
    check_scores,
    check_tensor,
)
from .ops import sampler as compiled_sampler
from .ops import sampler_torch
from .ops.sampler_torch import draw_seed_offset, gumbel_noise, teacher_ranking  # noqa: F401  (public helpers)

__all__ = ["SAMPLING_SCHEMES", "draw_partial_lists", "draw_seed_offset", "gumbel_noise", "partial_list_torch",
           "rank_log_probs", "rank_log_weights", "sample_partial_list", "teacher_ranking"]


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
    in draw order. ``hot + cold <= N`` (``<= min(lengths)``); columns ``>= lengths[b]`` are never
    sampled. The draws are the compiled op's for the ``(seed, offset)`` that ``generator``
    gives (:func:`draw_seed_offset`; global RNG when None, untouched when ``cold == 0``): the
    same sub-lists as :func:`sample_partial_list` with ``backend="compiled"``, bit for bit.
    """
    hot, cold, alpha, lengths = _check_sampler_args(scores, hot, cold, scheme, alpha, lengths)
    check_generator(generator)
    return sampler_torch.partial_list_torch(scores.detach(), hot, cold, scheme, alpha, generator, lengths)


def compiled_op_applies(scores: torch.Tensor, hot: int, cold: int, valid: Optional[torch.Tensor],
                        seed_offset: torch.Tensor) -> bool:
    """Whether the compiled op can draw this call's sub-lists (else the PyTorch op does: the
    same draws). It needs the extension (with CUDA kernels for CUDA scores), host-side seeds
    (a CPU ``seed_offset``: reading one from the GPU would synchronise), no tracing by
    ``torch.compile`` (the seeds are Python ints there), and every row long enough: no [B, N]
    mask, and ``lengths`` only on the CPU, where ``min(lengths) >= hot + cold`` is checked."""
    if not compiled_sampler.compiled_available() or torch.compiler.is_compiling():
        return False
    if seed_offset.device.type != "cpu":
        return False
    if scores.device.type == "cuda" and not compiled_sampler.extension_status()["cuda_kernels"]:
        return False
    if scores.device.type not in ("cpu", "cuda"):
        return False
    if valid is None:
        return True
    return valid.dim() == 1 and scores.device.type == "cpu" and (
        valid.numel() == 0 or int(valid.min()) >= hot + cold)


def draw_partial_lists(scores: torch.Tensor, hot: int, cold: int, scheme: str, alpha: float,
                       generator: Optional[torch.Generator], valid: Optional[torch.Tensor], *,
                       backend: str = "auto") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(ids [B, hot + cold], used [B, hot + cold] bool or None)`` for validated arguments with
    ``hot + cold <= N``: rows with fewer than ``hot + cold`` valid answers use what they have
    (``used`` marks the filled slots; None when ``valid`` is None, where every slot is used).
    ``valid``: None, [B] lengths or a [B, N] bool mask. ``(seed, offset)`` come from
    ``generator`` (only when ``cold > 0``); the compiled op draws when it applies
    (:func:`compiled_op_applies`), the PyTorch op otherwise: the same sub-lists either way."""
    scores = scores.detach()
    if cold == 0:
        seed_offset = torch.zeros(2, dtype=torch.int64)
        use_compiled = False
    else:
        seed_offset = draw_seed_offset(generator)
        use_compiled = backend != "torch" and compiled_op_applies(scores, hot, cold, valid, seed_offset)
        if backend == "compiled" and not use_compiled:
            raise ValueError("backend='compiled' but the compiled sampler op is not available for these inputs")
        if backend == "auto" and not compiled_sampler.compiled_available():
            compiled_sampler.warn_fallback_once()
    if use_compiled:
        seed, offset = seed_offset.tolist()
        ids = compiled_sampler.partial_list_op(scores, hot, cold, scheme, alpha, seed, offset, valid)
        return ids, None if valid is None else torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    ids, used = sampler_torch.partial_list_masked_op(scores, valid, hot, cold, scheme, alpha, seed_offset)
    return ids, None if valid is None else used


def sample_partial_list(scores: torch.Tensor, hot: int, cold: int, scheme: str = "zipf", alpha: float = 1.0,
                        generator: Optional[torch.Generator] = None, lengths: Optional[torch.Tensor] = None,
                        *, backend: str = "auto") -> torch.Tensor:
    """:func:`partial_list_torch`'s contract, on the compiled op when it is built.

    ``backend``: "auto" (compiled op if built and applicable, else the PyTorch sampler; a
    one-time warning when the extension is missing), "torch" or "compiled" (``ValueError`` when
    it cannot run here). Both draw from the ``(seed, offset)`` pair that ``generator`` gives
    (:func:`draw_seed_offset`: ``torch.randint(0, 2**62, (2,))`` on the generator's device, the
    global CPU generator when None) and compute the same Philox keys, so the sub-lists are
    identical bit for bit whichever path runs. ``cold == 0`` consumes no randomness.
    """
    check_choice(backend, "backend", SAMPLER_BACKENDS)
    hot, cold, alpha, lengths = _check_sampler_args(scores, hot, cold, scheme, alpha, lengths)
    check_generator(generator)
    return draw_partial_lists(scores, hot, cold, scheme, alpha, generator, lengths, backend=backend)[0]
