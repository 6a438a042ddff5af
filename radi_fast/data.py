"""What every dataset of the trainer shares: the item, the batch, the sampler, the loader.

A dataset (the synthetic benchmark, :mod:`radi_fast.synthetic`; FrozenBiLM's data,
:mod:`radi_fast.frozenbilm`) yields items, dicts with

* ``video`` float32 [F, D] frame features (F = ``num_frames``, zero-padded), ``video_mask`` bool [F]
* ``question`` int64 [L] token ids (0 = padding), ``question_mask`` bool [L]
* ``qtype`` int question type (0 where the format has none)
* ``labels`` list of answer ids used for *training* (the insufficient labels)
* ``answers`` / ``counts``: the *full* set of correct answers and how many annotators gave each,
  used for evaluation (Acc@1, Hit@5, nDCG@5 are computed against it)
* ``index`` position of the item in its split

:class:`VideoQACollate` turns a list of items into dense tensors: ``targets`` [B, N] multi-hot of
the training labels and ``answer_counts`` [B, N] with the full sets. :class:`VideoQAData` is what
the trainer gets: three splits and the vocabularies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

PAD, UNK = 0, 1


class VideoQACollate:
    """Stack items into a batch; ``targets`` and ``answer_counts`` become dense [B, n_answers]."""

    def __init__(self, n_answers: int):
        self.n_answers = n_answers

    def __call__(self, items: List[dict]) -> Dict[str, torch.Tensor]:
        b = len(items)
        targets = torch.zeros(b, self.n_answers)
        counts = torch.zeros(b, self.n_answers)
        for i, it in enumerate(items):
            if len(it["labels"]):
                targets[i, list(it["labels"])] = 1.0
            if len(it["answers"]):
                counts[i, list(it["answers"])] = torch.as_tensor(it["counts"], dtype=torch.float32)
        return {
            "video": torch.stack([it["video"] for it in items]),
            "video_mask": torch.stack([it["video_mask"] for it in items]),
            "question": torch.stack([it["question"] for it in items]),
            "question_mask": torch.stack([it["question_mask"] for it in items]),
            "qtype": torch.tensor([it["qtype"] for it in items], dtype=torch.long),
            "targets": targets,
            "answer_counts": counts,
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        }


class EpochSampler(Sampler):
    """Shuffles with a permutation that depends only on ``(seed, epoch)``, shards it by rank.

    This is what makes ``--resume`` exact without saving any data-loader state: the order of an
    epoch is recomputed from the epoch number, and ``set_start`` skips the batches a mid-epoch
    checkpoint had already consumed. With ``world_size > 1`` each rank takes every
    ``world_size``-th index of the padded permutation, like
    :class:`torch.utils.data.DistributedSampler`. Raises ``ValueError`` unless
    ``0 <= rank < world_size``.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's share (resuming mid-epoch)."""
        self.start = start

    def _indices(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = -(-self.n // self.world_size)
        order += order[: per_rank * self.world_size - self.n]  # pad so every rank gets as many
        return order[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return -(-self.n // self.world_size) - self.start


class TensorVideoQA(Dataset):
    """A split held in memory as arrays (the synthetic benchmark, or any pre-built tensors)."""

    def __init__(self, video, video_mask, question, question_mask, qtype, labels, answers, counts):
        self.video = torch.as_tensor(video, dtype=torch.float32)
        self.video_mask = torch.as_tensor(video_mask, dtype=torch.bool)
        self.question = torch.as_tensor(question, dtype=torch.long)
        self.question_mask = self.question != PAD if question_mask is None else torch.as_tensor(question_mask)
        self.qtype = [int(t) for t in qtype]
        self.labels, self.answers, self.counts = labels, answers, counts

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {
            "video": self.video[i],
            "video_mask": self.video_mask[i],
            "question": self.question[i],
            "question_mask": self.question_mask[i],
            "qtype": self.qtype[i],
            "labels": self.labels[i],
            "answers": self.answers[i],
            "counts": self.counts[i],
            "index": i,
        }


@dataclass
class VideoQAData:
    """What the trainer needs: the three splits and the answer/question vocabularies."""

    train: Dataset
    val: Dataset
    test: Dataset
    answers: List[str]                            # answer id -> answer string
    question_vocab: Dict[str, int]
    feat_dim: int
    answer_features: Optional[torch.Tensor] = None  # [N, text_dim] answer-text embeddings, if any
    info: Optional[dict] = None                   # generator facts (clusters, ...) for docs and tests

    @property
    def n_answers(self) -> int:
        return len(self.answers)


def make_loader(dataset: Dataset, n_answers: int, *, sampler: Iterable[int], batch_size: int,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader of ``dataset`` in the order of ``sampler``, batched by :class:`VideoQACollate`.

    Its own generator (seeded 0) keeps the loader from drawing on the global torch RNG.
    """
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=VideoQACollate(n_answers),
                      num_workers=num_workers, generator=torch.Generator().manual_seed(0))
