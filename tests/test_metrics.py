"""Metrics of sec. 4.1 (Acc@1, Hit@k, nDCG@k, iVQA accuracy): hand cases and bad input."""
import math

import pytest
import torch

from radi_fast import metrics

SCORES = torch.tensor([0.1, 0.9, 0.3, 0.5, 0.0, 0.2])  # ranking: 1, 3, 2, 5, 0, 4
CASES = [  # correct answers -> (acc@1, hit@5, ndcg@5)
    ([1, 3], (1.0, 1.0, 1.0)),  # both correct answers on top: ideal
    ([2, 4], (0.0, 1.0, (1 / math.log2(4)) / (1 + 1 / math.log2(3)))),  # positions 3 and 6
    ([4], (0.0, 0.0, 0.0)),  # position 6: outside the top 5
    ([0, 1, 2, 3, 4, 5], (1.0, 1.0, 1.0)),  # all correct: the ideal has 5 positions
    ([3, 0], (0.0, 1.0, (1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3)))),
]


def batch():
    scores = SCORES.expand(len(CASES), -1).contiguous()
    lists = [c for c, _ in CASES]
    expected = torch.tensor([e for _, e in CASES])
    return scores, lists, expected


def multi_hot(lists, n):
    out = torch.zeros(len(lists), n)
    for b, row in enumerate(lists):
        out[b, row] = 1.0
    return out


@pytest.mark.parametrize("form", ["lists", "multi_hot", "bool"])
def test_hand_cases(form):
    scores, lists, expected = batch()
    targets = {"lists": lists, "multi_hot": multi_hot(lists, 6), "bool": multi_hot(lists, 6).bool()}[form]
    for fn, column in [(metrics.acc_at_1, 0), (metrics.hit_at_k, 1), (metrics.ndcg_at_k, 2)]:
        per_row = fn(scores, targets, reduction="none")
        torch.testing.assert_close(per_row, expected[:, column], rtol=1e-6, atol=1e-7)
        mean = fn(scores, targets)
        assert mean.dim() == 0 and mean.dtype == torch.float32
        torch.testing.assert_close(mean, expected[:, column].mean(), rtol=1e-6, atol=1e-7)


def test_ndcg_ideal_uses_min_k_and_correct_count():
    scores = SCORES[None, :]
    # 3 correct answers, the top 2 predictions correct: ideal DCG@2 has 2 positions -> 1
    assert metrics.ndcg_at_k(scores, [[1, 3, 4]], k=2).item() == pytest.approx(1.0)
    # ... and at k = 5 the third correct one (position 6) is missed
    ideal5 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics.ndcg_at_k(scores, [[1, 3, 4]], k=5).item() == pytest.approx((1 + 1 / math.log2(3)) / ideal5)
    # k above N is clipped to N: answer 4 (position 6) found
    assert metrics.hit_at_k(scores, [[4]], k=10).item() == 1.0
    assert metrics.ndcg_at_k(scores, [[4]], k=10).item() == pytest.approx(1 / math.log2(7))


def test_ties_broken_by_lower_index():
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert metrics.acc_at_1(scores, [[0]]).item() == 1.0
    assert metrics.acc_at_1(scores, [[1]]).item() == 0.0
    assert metrics.hit_at_k(scores, [[2]], k=2).item() == 0.0
    assert metrics.hit_at_k(scores, [[2]], k=3).item() == 1.0
    assert metrics.ndcg_at_k(scores, [[1]], k=5).item() == pytest.approx(1 / math.log2(3))


def test_ivqa_accuracy_and_weights():
    counts = torch.tensor([[0, 1, 3, 0], [2, 0, 0, 1], [0, 0, 5, 0]])
    scores = torch.tensor([[0.0, 2.0, 1.0, 0.0], [3.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    weights = metrics.ivqa_target_weights(counts)
    torch.testing.assert_close(weights, torch.tensor([[0, 0.5, 1, 0], [1, 0, 0, 0.5], [0, 0, 1, 0]]))
    torch.testing.assert_close(metrics.ivqa_accuracy(scores, counts, reduction="none"), torch.tensor([0.5, 1.0, 0.0]))
    assert metrics.ivqa_accuracy(scores, counts).item() == pytest.approx(0.5)
    assert metrics.ivqa_accuracy(scores.double(), counts.double()).dtype == torch.float64


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.acc_at_1(SCORES[None, :], [[1], []]), "targets"),  # row count mismatch
    (lambda: metrics.acc_at_1(SCORES[None, :], [[]]), "targets"),  # no correct answer
    (lambda: metrics.hit_at_k(SCORES[None, :], torch.zeros(1, 6)), "targets"),
    (lambda: metrics.ndcg_at_k(SCORES[None, :], [[6]]), "targets"),  # index out of range
    (lambda: metrics.ndcg_at_k(SCORES[None, :], [[-1]]), "targets"),
    (lambda: metrics.ndcg_at_k(SCORES[None, :], torch.ones(1, 5)), "targets"),  # shape
    (lambda: metrics.acc_at_1(SCORES, [[1]]), "scores"),  # 1-D
    (lambda: metrics.acc_at_1(torch.tensor([[float("nan"), 1.0]]), [[1]]), "scores"),
    (lambda: metrics.hit_at_k(SCORES[None, :], [[1]], k=0), "k"),
    (lambda: metrics.ndcg_at_k(SCORES[None, :], [[1]], reduction="avg"), "reduction"),
    (lambda: metrics.ivqa_target_weights(torch.tensor([[-1, 2]])), "answer_counts"),
    (lambda: metrics.ivqa_accuracy(SCORES[None, :], torch.ones(1, 5)), "answer_counts"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
