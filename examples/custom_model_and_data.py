"""Your own model and data in the RADI trainer, without editing radi_fast: ``--model`` / ``--data``.

    python -m radi_fast.train --data examples/custom_model_and_data.py:make_data \
        --model examples/custom_model_and_data.py:make_model --schemes baseline,kd,radi_p,radi_l \
        --out_dir runs/custom --lr 3e-3
    python examples/custom_model_and_data.py        # the same, with small settings (about 20 s on a CPU)

``make_data(cfg)`` returns a :class:`radi_fast.data.VideoQAData`: the train / val / test
datasets, whose items are dicts as described in :mod:`radi_fast.data` (frame features and mask,
question tokens and mask, question type, the *training* labels, the *full* answer set with its
counts, the index), and the answer vocabulary. ``make_model(data, cfg)`` returns a
:class:`radi_fast.model.RadiModel`: ``encode`` (everything but the last layer, run once) and
``decode`` (the last layer and the answer scores), so that RADI-P's MC dropout repeats only
the last layer. ``cfg`` is the trainer's whole :class:`radi_fast.config.Config`: read any
setting from it (here ``cfg.model.d_model``, ``cfg.model.dropout``, ``cfg.data.num_frames``).

The toy task: 6 colours, each with 2 synonyms ("red" / "crimson", ...). A video shows one
colour (a noisy prototype in a few of its frames); annotators answer with either synonym, and
training keeps only one of them per question (the insufficient labels RADI distils around).
In your own code the modules would be a package (``--model mypkg.models:build``) and the data
your own files; the interface is the same.
"""
from __future__ import annotations

import sys

import torch
import torch.nn as nn

from radi_fast.data import TensorVideoQA, VideoQAData
from radi_fast.model import RadiModel

COLOURS = [("red", "crimson"), ("blue", "navy"), ("green", "olive"), ("yellow", "gold"), ("white", "ivory"),
           ("black", "ebony")]
FEAT_DIM = 16


def make_data(cfg) -> VideoQAData:
    """The three splits of the toy colour task (seeded by ``--data_seed``; sizes from ``--n_train``,
    ``--n_val``, ``--n_test``: the synthetic benchmark's flags are reused here)."""
    g = torch.Generator().manual_seed(cfg.synthetic.data_seed)
    answers = [w for pair in COLOURS for w in pair]
    prototypes = torch.randn(len(COLOURS), FEAT_DIM, generator=g) * 0.5
    frames = cfg.data.num_frames
    vocab = {"<pad>": 0, "<unk>": 1, "what": 2, "colour": 3, "is": 4, "it": 5}

    def split(n):
        colour = torch.randint(len(COLOURS), (n,), generator=g)
        video = torch.randn(n, frames, FEAT_DIM, generator=g)
        start = torch.randint(frames // 2, (n,), generator=g)
        for i in range(n):
            video[i, start[i]:start[i] + frames // 2] += prototypes[colour[i]]
        question = torch.tensor([[2, 3, 4, 5]] * n)
        labels, full, counts = [], [], []
        for i in range(n):
            c = int(colour[i])
            votes = torch.randint(2, (5,), generator=g)  # five annotators pick a synonym each
            n_second = int(votes.sum())
            ids = [2 * c, 2 * c + 1]
            cnt = [5 - n_second, n_second]
            full.append([a for a, k in zip(ids, cnt) if k])
            counts.append([k for k in cnt if k])
            labels.append([ids[0] if cnt[0] >= cnt[1] else ids[1]])  # the most frequent answer only
        return TensorVideoQA(video, torch.ones(n, frames, dtype=torch.bool), question, None,
                             [0] * n, labels, full, counts)

    s = cfg.synthetic
    return VideoQAData(split(s.n_train), split(s.n_val), split(s.n_test), answers, vocab, FEAT_DIM)


class MeanPoolMLP(RadiModel):
    """Mean-pooled frames -> MLP (``encode``); dropout + a linear answer scorer (``decode``)."""

    def __init__(self, feat_dim: int, n_answers: int, width: int, dropout: float):
        super().__init__()
        self.n_answers = n_answers
        self.body = nn.Sequential(nn.LayerNorm(feat_dim), nn.Linear(feat_dim, width), nn.GELU(), nn.Dropout(dropout))
        self.last_layer = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, n_answers))  # MC dropout: only here

    def encode(self, batch):
        mask = batch["video_mask"].unsqueeze(-1).float()
        pooled = (batch["video"] * mask).sum(1) / mask.sum(1).clamp(min=1)
        return (self.body(pooled),)

    def decode(self, hidden):
        return self.last_layer(hidden[0])


def make_model(data: VideoQAData, cfg) -> RadiModel:
    """The model for ``data`` (torch is already seeded by the trainer for this stage)."""
    return MeanPoolMLP(data.feat_dim, data.n_answers, cfg.model.d_model, cfg.model.dropout)


def main(argv=None) -> int:
    """Run the trainer on the toy task with small settings (extra flags are passed on)."""
    from radi_fast import train

    here = __file__
    flags = ["--data", f"{here}:make_data", "--model", f"{here}:make_model", "--schemes", "baseline,kd,radi_p,radi_l",
             "--n_train", "600", "--n_val", "200", "--n_test", "200", "--teacher_epochs", "4", "--student_epochs", "3",
             "--lr", "3e-3", "--batch_size", "32", "--hot", "4", "--cold", "4", "--top_k", "12",
             "--out_dir", "runs/custom_example"]
    return train.main(flags + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
