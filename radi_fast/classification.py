"""Eq. 2 of the paper: the classification loss over the labelled answers."""
from __future__ import annotations

import torch

from ._validation import check_reduction, check_tensor, reduce


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``L_cls = -(1/|A_x|) sum_{a in A_x} log softmax(logits)_a`` (eq. 2), averaged over the batch.

    Args:
        logits: [B, N] answer scores ``p(a_i | x)`` (unnormalised).
        targets: either a multi-hot / weight tensor [B, N] (e.g. iVQA's ``min(1, count / 2)``)
            or a LongTensor [B] of single answer indices. With weights the loss is the weighted
            mean ``-sum_a w_a log P(a) / sum_a w_a``, which is eq. 2 for a 0/1 multi-hot.
        reduction: "mean" (default), "sum" or "none" ([B]).
    """
    check_tensor(logits, "logits", 2)
    check_reduction(reduction)
    log_probs = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)
    if isinstance(targets, torch.Tensor) and targets.dim() == 1 and not targets.dtype.is_floating_point:
        if targets.shape[0] != logits.shape[0]:
            raise ValueError(f"shape mismatch: targets has {targets.shape[0]} rows, logits {logits.shape[0]}")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
            raise ValueError(f"targets holds answer indices outside [0, {logits.shape[1]})")
        per_sample = -log_probs.gather(1, targets.long()[:, None]).squeeze(1)
        return reduce(per_sample, reduction)
    if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape:
        raise ValueError(
            f"targets must be a [B, N] multi-hot/weight tensor of logits' shape {tuple(logits.shape)} "
            f"or a [B] index tensor, got {tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets)}"
        )
    weights = targets.to(log_probs.dtype)
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("targets must be finite and non-negative")
    total = weights.sum(dim=1)
    if bool((total <= 0).any()):
        raise ValueError("targets has a row with no labelled answer: eq. 2 is undefined for it")
    per_sample = -(weights * log_probs).sum(dim=1) / total
    return reduce(per_sample, reduction)
