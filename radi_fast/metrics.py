"""Evaluation metrics of sec. 4.1: Acc@1, Hit@k and nDCG@k against the full set of correct
answers, and iVQA's graded accuracy.

Conventions:

* **Ranking.** Answers sorted by score, descending, ties broken by the lower answer index (a
  stable sort), so a metric never depends on how ``topk`` happens to order ties. ``k`` larger
  than the number of answers N is clipped to N.
* **Targets.** Either a multi-hot / bool ``[B, N]`` tensor (nonzero = correct) or a list of B
  lists of correct answer indices. Relevance is binary; every row needs >= 1 correct answer.
* **nDCG@k.** ``DCG = sum_{p=1..k} rel_p / log2(p + 1)`` over the predicted ranking, divided by
  the ideal DCG, which puts the row's correct answers first: ``sum_{p=1..min(k, #correct)}
  1 / log2(p + 1)``. So a row with 3 correct answers all in the top 3 scores 1.
* **iVQA accuracy.** iVQA has 5 annotators per question; an answer given by ``c`` of them is
  worth ``min(1, c / 2)``; the metric is that worth for the top-1 answer.
* **Reduction.** ``"mean"`` (default): a 0-dim tensor, the mean over rows; ``"none"``: ``[B]``.
  An empty batch (B = 0) gives 0 (``"mean"``) or ``[0]``, never NaN; rows without answers
  (N = 0, B > 0) raise ``ValueError``: a row needs a correct answer (the README's rule for
  empty batches).
  Float64 when ``scores`` is float64, else float32.
* **Valid answers.** ``mask`` ([B, N] bool, True = valid, any positions) and/or ``lengths``
  ([B], a prefix) restrict each row to its valid answers: invalid ones rank after every valid
  one (their scores may be NaN/inf and are never compared), and a target on an invalid answer
  does not count as correct.
* **Checks** that read the data (NaN scores, empty target rows) run on CPU tensors, on CUDA
  only when asked (:func:`radi_fast.set_value_checks`): they synchronise.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ._validation import check_choice, check_int, check_tensor, combine_valid, valid_mask, value_checks_enabled

__all__ = ["acc_at_1", "hit_at_k", "ivqa_accuracy", "ivqa_target_weights", "ndcg_at_k"]

Targets = Union[torch.Tensor, Sequence[Sequence[int]]]


def _check_scores(scores, mask=None, lengths=None) -> Optional[torch.Tensor]:
    """Checks ``scores`` (NaN only among the valid answers); returns the [B, N] valid mask or None."""
    check_tensor(scores, "scores", 2, finite=False)  # -inf is a legitimate "never predict" score
    if scores.shape[1] == 0 and scores.shape[0]:
        raise ValueError("scores has no answer column (shape (B, 0)): a row without answers has no correct "
                         "answer, and the metrics are undefined there (an empty batch, B = 0, is fine)")
    B, N = scores.shape
    valid = valid_mask(combine_valid(mask, lengths, B, N, scores.device), B, N, scores.device)
    if value_checks_enabled(scores):
        nan = torch.isnan(scores) if valid is None else torch.isnan(scores) & valid
        if bool(nan.any()):
            raise ValueError("scores contains NaN")
    return valid


def _out_dtype(scores: torch.Tensor) -> torch.dtype:
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


def _finish(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    check_choice(reduction, "reduction", ("mean", "none"))
    if reduction == "none":
        return per_row
    return per_row.mean() if per_row.shape[0] else per_row.sum()  # an empty batch: 0, not NaN


def _correct_mask(targets: Targets, scores: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Targets as a bool ``[B, N]`` mask of correct valid answers (validated; every row non-empty)."""
    B, N = scores.shape
    if isinstance(targets, torch.Tensor):
        if targets.shape != scores.shape:
            raise ValueError(f"targets must have the shape of scores {tuple(scores.shape)}, "
                             f"got {tuple(targets.shape)}")
        if targets.is_floating_point() and value_checks_enabled(targets) and not bool(torch.isfinite(targets).all()):
            raise ValueError("targets contains non-finite values")
        mask = (targets != 0).to(scores.device)
    else:
        try:
            rows = [list(row) for row in targets]
        except TypeError:
            raise ValueError("targets must be a [B, N] tensor or a list of lists of answer indices") from None
        if len(rows) != B:
            raise ValueError(f"targets has {len(rows)} rows but scores has {B}")
        mask = torch.zeros(B, N, dtype=torch.bool)
        for b, row in enumerate(rows):
            for a in row:
                if isinstance(a, bool) or not isinstance(a, (int, torch.Tensor)) or not 0 <= int(a) < N:
                    raise ValueError(f"targets[{b}] holds {a!r}, not an answer index in [0, {N})")
                mask[b, int(a)] = True
        mask = mask.to(scores.device)
    if valid is not None:
        mask = mask & valid
    if not value_checks_enabled(mask):
        return mask
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        rows = torch.nonzero(empty).flatten().tolist()
        raise ValueError(f"targets has rows with no correct answer (rows {rows[:10]}): the metrics are undefined there")
    return mask


def _top_k(scores: torch.Tensor, k: int, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[B, min(k, N)]`` answer indices of the top k, ties by lower index, invalid answers last."""
    if valid is None:
        return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : min(k, scores.shape[1])]
    keys = scores.masked_fill(~valid, float("-inf"))  # NaN never reaches the comparisons
    order = torch.sort(keys, dim=1, descending=True, stable=True).indices
    # a second stable sort puts the valid answers first (a valid -inf before an invalid answer)
    invalid_first = torch.sort((~valid).gather(1, order).to(torch.uint8), dim=1, stable=True).indices
    return order.gather(1, invalid_first)[:, : min(k, scores.shape[1])]


def acc_at_1(scores: torch.Tensor, targets: Targets, *, reduction: str = "mean", mask=None,
             lengths=None) -> torch.Tensor:
    """Acc@1: 1 when the top-scored valid answer (ties by lower index) is one of the correct answers."""
    valid = _check_scores(scores, mask, lengths)
    correct = _correct_mask(targets, scores, valid)
    hit = correct.gather(1, _top_k(scores, 1, valid)).any(dim=1)  # one column (none when B = N = 0)
    return _finish(hit.to(_out_dtype(scores)), reduction)


def hit_at_k(scores: torch.Tensor, targets: Targets, k: int = 5, *, reduction: str = "mean", mask=None,
             lengths=None) -> torch.Tensor:
    """Hit@k: 1 when at least one correct answer is among the top k predictions."""
    valid = _check_scores(scores, mask, lengths)
    k = check_int(k, "k", minimum=1)
    correct = _correct_mask(targets, scores, valid)
    hit = correct.gather(1, _top_k(scores, k, valid)).any(dim=1)
    return _finish(hit.to(_out_dtype(scores)), reduction)


def ndcg_at_k(scores: torch.Tensor, targets: Targets, k: int = 5, *, reduction: str = "mean", mask=None,
              lengths=None) -> torch.Tensor:
    """nDCG@k with binary relevance; ideal DCG over ``min(k, #correct)`` positions."""
    valid = _check_scores(scores, mask, lengths)
    k = check_int(k, "k", minimum=1)
    correct = _correct_mask(targets, scores, valid)
    dtype = _out_dtype(scores)
    top = _top_k(scores, k, valid)
    discounts = 1.0 / torch.log2(torch.arange(2, top.shape[1] + 2, dtype=dtype, device=scores.device))
    dcg = (correct.gather(1, top).to(dtype) * discounts).sum(1)
    n_ideal = correct.sum(1).clamp(min=1, max=top.shape[1])  # >= 1 (rows without a correct answer are refused)
    ideal_dcg = torch.cumsum(discounts, 0)[n_ideal - 1]
    return _finish(dcg / ideal_dcg, reduction)


def ivqa_target_weights(answer_counts: torch.Tensor) -> torch.Tensor:
    """iVQA's worth of each answer, ``min(1, count / 2)`` (``count`` = annotators out of 5 who
    gave it); also usable as soft targets for the classification loss. Float, same shape."""
    check_tensor(answer_counts, "answer_counts", 2, floating=False)
    if answer_counts.dtype == torch.bool:
        raise ValueError("answer_counts must hold counts (ints or floats), got a bool tensor")
    if value_checks_enabled(answer_counts):
        if answer_counts.is_floating_point() and not bool(torch.isfinite(answer_counts).all()):
            raise ValueError("answer_counts contains non-finite values")
        if answer_counts.numel() and bool((answer_counts < 0).any()):
            raise ValueError("answer_counts must be >= 0")
    counts = answer_counts if answer_counts.is_floating_point() else answer_counts.to(torch.float32)
    return (counts / 2).clamp(max=1)


def ivqa_accuracy(scores: torch.Tensor, answer_counts: torch.Tensor, *, reduction: str = "mean", mask=None,
                  lengths=None) -> torch.Tensor:
    """iVQA's graded accuracy: ``min(1, count / 2)`` of the top-1 valid answer (ties by lower index)."""
    valid = _check_scores(scores, mask, lengths)
    weights = ivqa_target_weights(answer_counts)
    if weights.shape != scores.shape:
        raise ValueError(f"answer_counts must have the shape of scores {tuple(scores.shape)}, "
                         f"got {tuple(weights.shape)}")
    top1 = _top_k(scores, 1, valid).to(weights.device)
    return _finish(weights.gather(1, top1).sum(dim=1).to(_out_dtype(scores)), reduction)  # one column, or none
