"""The pure-PyTorch partial-list sampler (Gumbel-top-k), RADI-L's fallback when the compiled op
``radi_fast._C`` is not built. Conventions (ranking, ranks, laws, randomness): docs/sampler.md."""
from __future__ import annotations

from typing import Optional

import torch


def teacher_ranking(scores: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[B, N] -> [B, N] answer indices by descending score, ties by lower index, padding last."""
    keys = scores
    if lengths is not None:
        columns = torch.arange(scores.shape[1], device=scores.device)
        padding = columns[None, :] >= lengths.to(scores.device)[:, None]
        keys = scores.masked_fill(padding, float("-inf"))  # valid scores are finite: padding sorts last
    # stable=True keeps equal scores in index order, which is the documented tie rule
    return torch.sort(keys, dim=1, descending=True, stable=True).indices


def rank_log_weights(n_remaining: int, scheme: str, alpha: float, *, dtype: torch.dtype = torch.float64,
                     device=None) -> torch.Tensor:
    """Unnormalised log-probabilities ``log p_r`` of ranks ``r = 1..n_remaining`` (1-D tensor).

    ``"exp"``: ``-alpha * r``; ``"zipf"``: ``-alpha * log r``; ``"random"``: 0. Finite for any
    ``alpha >= 0``, so even a very peaked law never produces ``-inf`` keys.
    """
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


def partial_list_torch(scores, hot, cold, scheme, alpha, generator, lengths):
    """``[B, N]`` scores -> ``[B, hot + cold]`` answer ids: the hot list in ranking order, then the
    cold draws in draw order. Arguments already validated (see ``radi_fast.sampling``)."""
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
