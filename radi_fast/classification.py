"""Eq. 2 of the paper: the classification loss over the labelled answers."""
from __future__ import annotations

from typing import Optional

import torch

from ._validation import (
    check_has_data,
    check_reduction,
    check_tensor,
    combine_valid,
    reduce,
    valid_mask,
    value_checks_enabled,
)


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", *,
                        mask: Optional[torch.Tensor] = None, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``L_cls = -(1/|A_x|) sum_{a in A_x} log softmax(logits)_a`` (eq. 2), averaged over the batch.

    Args:
        logits: [B, N] answer scores ``p(a_i | x)`` (unnormalised).
        targets: either a multi-hot / weight tensor [B, N] (e.g. iVQA's ``min(1, count / 2)``)
            or a LongTensor [B] of single answer indices. With weights the loss is the weighted
            mean ``-sum_a w_a log P(a) / sum_a w_a``, which is eq. 2 for a 0/1 multi-hot.
        reduction: "mean" (default), "sum" or "none" ([B]). An empty batch (B = 0) gives 0 for
            "mean" and "sum"; rows without answers (N = 0) raise ``ValueError`` (no labelled
            answer), as the README's rule for empty batches says.
        mask: optional [B, N] bool, True = a valid answer (any positions); ``lengths``: optional
            [B] numbers of valid answers (a prefix); both combine. The softmax runs over the valid
            answers only; invalid ones never influence the loss (their weights are ignored, their
            logits may be NaN/inf) and get exactly 0 gradient. Every row needs a labelled valid
            answer.

    Returns fp32 for fp16/bf16/fp32 logits, fp64 for fp64 (also under ``torch.autocast``); the
    gradient reaches ``logits`` in its dtype. Value checks (finite, non-negative weights, a
    labelled answer per row, indices in range) read the data: they run on CPU tensors, on CUDA
    only when asked (:func:`radi_fast.set_value_checks`), never under ``torch.compile``.
    """
    check_tensor(logits, "logits", 2, finite=False)
    check_reduction(reduction)
    B, N = logits.shape
    if N == 0 and B:
        raise ValueError("logits has no answer column (shape (B, 0)): eq. 2 needs a labelled answer in every row "
                         "(an empty batch, B = 0, is fine)")
    valid = valid_mask(combine_valid(mask, lengths, B, N, logits.device), B, N, logits.device)
    checks = value_checks_enabled(logits)
    if isinstance(targets, torch.Tensor):
        check_has_data(targets, "targets")
    if checks and logits.numel():
        finite = torch.isfinite(logits) if valid is None else torch.isfinite(logits) | ~valid
        if not bool(finite.all()):
            raise ValueError("logits contains non-finite values (NaN or inf) among the valid answers")
    with torch.autocast(logits.device.type, enabled=False):
        x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        if valid is not None:
            x = x.masked_fill(~valid, float("-inf"))
        log_probs = torch.log_softmax(x, dim=-1)
        if valid is not None:
            log_probs = log_probs.masked_fill(~valid, 0.0)  # 0 * -inf would be NaN
        if isinstance(targets, torch.Tensor) and targets.dim() == 1 and not targets.dtype.is_floating_point:
            if targets.shape[0] != B:
                raise ValueError(f"shape mismatch: targets has {targets.shape[0]} rows, logits {B}")
            targets = targets.long().to(logits.device)
            if checks and targets.numel():
                if int(targets.min()) < 0 or int(targets.max()) >= N:
                    raise ValueError(f"targets holds answer indices outside [0, {N})")
                if valid is not None and not bool(valid.gather(1, targets[:, None]).all()):
                    raise ValueError("targets points at an answer that mask/lengths mark invalid")
            per_sample = -log_probs.gather(1, targets[:, None]).squeeze(1)
            return reduce(per_sample, reduction)
        if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape:
            raise ValueError(
                f"targets must be a [B, N] multi-hot/weight tensor of logits' shape {tuple(logits.shape)} "
                f"or a [B] index tensor, got {tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets)}"
            )
        weights = targets.to(device=logits.device, dtype=log_probs.dtype)
        if valid is not None:
            weights = weights.masked_fill(~valid, 0.0)
        if checks:
            if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
                raise ValueError("targets must be finite and non-negative")
        # The weighted mean is scale-free: divide each row by a power of two near its largest
        # weight (exact: the same bits as unscaled weights), so that the row's sum cannot overflow.
        exponent = torch.frexp(weights.amax(dim=1, keepdim=True) if N else weights.sum(1, keepdim=True)).exponent
        weights = torch.ldexp(weights, -exponent.to(weights.dtype))
        total = weights.sum(dim=1)
        if checks and bool((total <= 0).any()):
            raise ValueError("targets has a row with no labelled (valid) answer: eq. 2 is undefined for it")
        per_sample = -(weights * log_probs).sum(dim=1) / total
        return reduce(per_sample, reduction)
