"""The synthetic video-QA benchmark: seeded, nothing to download, about 2 s to generate.

:func:`make_synthetic` builds a :class:`~radi_fast.data.VideoQAData` from a
:class:`SyntheticConfig`; the same settings always give the same data. The generative story (answer
clusters, visual concepts, annotators, insufficient labels) and why ranking distillation has
something to learn from it are in docs/training.md, "The synthetic benchmark".
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from ._settings import check_fields
from .data import PAD, UNK, TensorVideoQA, VideoQAData

TYPE_NAMES = ["object", "colour", "action", "place", "person", "animal", "food", "sport"]
WH_WORDS = ["what", "which", "who", "where", "how"]


@dataclass
class SyntheticConfig:
    """Size and difficulty of the synthetic benchmark (the generative story is in docs/training.md)."""

    n_train: int = field(default=5000, metadata={"help": "training questions (one video each)", "min": 1})
    n_val: int = field(default=1000, metadata={"help": "validation questions (full answer sets)", "min": 1})
    n_test: int = field(default=1000, metadata={"help": "test questions (full answer sets)", "min": 1})
    n_answers: int = field(default=1000, metadata={
        "help": "answer vocabulary size (at least 2 x n_types x cluster_max)", "min": 2})
    n_types: int = field(default=6, metadata={
        "help": "question types, each owning a share of the answer clusters", "min": 1, "max": len(TYPE_NAMES)})
    cluster_min: int = field(default=2, metadata={
        "help": "synonym / related-answer cluster sizes are uniform in [min, max]", "min": 1})
    cluster_max: int = field(default=6, metadata={"help": "largest cluster size (see cluster_min)", "min": 1})
    feat_dim: int = field(default=32, metadata={"help": "frame feature dimension", "min": 1})
    text_dim: int = field(default=32, metadata={
        "help": "answer \"text embedding\" dimension (a language model's stand-in)", "min": 1})
    num_frames: int = field(
        default=10, metadata={"help": "frames per video (the trainer sets it from --num_frames)", "min": 6})
    frame_noise: float = field(
        default=1.0, metadata={"help": "std of the Gaussian noise on every frame feature", "min": 0})
    visual_signal: float = field(default=3.0, metadata={
        "help": "norm of a concept's visual prototype added to the frames showing it", "min": 0})
    alignment: float = field(default=0.8, metadata={
        "help": "how much a visual prototype follows its cluster's text embedding (CLIP-like)", "min": 0, "max": 1})
    secondary_prob: float = field(default=0.5, metadata={
        "help": "chance that a second, less salient concept of the asked type is shown", "min": 0, "max": 1})
    secondary_vote: float = field(default=0.25, metadata={
        "help": "chance that an annotator answers about that second concept", "min": 0, "max": 1})
    popularity_zipf: float = field(default=1.0, metadata={
        "help": "within-cluster popularity of answer r is proportional to r^-s", "min": 0})
    dirichlet: float = field(
        default=3.0, metadata={"help": "per-video variation of the annotators' synonym preferences", "gt": 0})
    synonym_noise: float = field(
        default=0.7, metadata={"help": "how far a synonym's text embedding is from its cluster's", "min": 0})
    type_share: float = field(default=1.0, metadata={
        "help": "weight of the text direction shared by all answers of a question type", "min": 0})
    shown_types: int = field(default=3, metadata={
        "help": "concepts shown per video: the asked type's and shown_types - 1 others (<= n_types)", "min": 1})
    n_annotators: int = field(default=5, metadata={"help": "annotators per question, as iVQA's five", "min": 1})
    data_seed: int = field(default=0, metadata={"help": "seed of the generator (the benchmark itself)", "min": 0})


def check_synthetic(cfg: SyntheticConfig) -> None:
    """Raise ``ValueError`` for settings the generator cannot use: a field outside its range
    (``SyntheticConfig``'s metadata), more than 8 types, ``cluster_min > cluster_max``, too few
    answers for the clusters, ``shown_types > n_types`` or ``num_frames < 6``. Cheap: the trainer
    calls it before any work."""
    check_fields(cfg)
    if cfg.cluster_min > cfg.cluster_max:
        raise ValueError(f"--cluster_min ({cfg.cluster_min}) must be <= --cluster_max ({cfg.cluster_max})")
    if cfg.n_answers < 2 * cfg.n_types * cfg.cluster_max:
        raise ValueError(f"--n_answers {cfg.n_answers} is too small for {cfg.n_types} types of clusters: it must be "
                         f">= 2 x n_types x cluster_max = {2 * cfg.n_types * cfg.cluster_max}")
    if cfg.shown_types > cfg.n_types:
        raise ValueError(f"--shown_types ({cfg.shown_types}) must be <= --n_types ({cfg.n_types})")

def _cluster_sizes(rng: np.random.Generator, n: int, lo: int, hi: int) -> List[int]:
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(lo, hi + 1)))
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] < 1:
        sizes.pop()
        sizes[-1] += n - sum(sizes)
    return sizes


TRAIN_LABELS = {"top1": 1, "top2": 2, "all": None}  # --train_labels: how many answers training keeps


def make_synthetic(cfg: SyntheticConfig = SyntheticConfig(), train_labels: str = "top1") -> VideoQAData:
    """Generate the seeded synthetic benchmark: the same ``cfg`` always gives the same data.

    See docs/training.md for the story. In short: answers come in clusters of synonyms/related
    answers owned by a question type; a video shows one concept (cluster) per type in a span of
    frames, sometimes a second one less visibly; five annotators answer each question with
    members of the shown clusters, and training keeps only the most frequent answer
    (``train_labels="top1"``, sec. 4.3), the two most frequent (``"top2"``) or every distinct
    answer (``"all"``); ties go to the earliest annotator's. The labels kept change nothing else:
    the videos, questions and full answer sets are the same for every ``train_labels``.

    Returns the three splits as :class:`~radi_fast.data.TensorVideoQA` (video float32
    [n, num_frames, feat_dim]), ``answer_features`` float32 [n_answers, text_dim] and the
    clusters in ``info``. Raises ``ValueError`` for the settings :func:`check_synthetic` refuses.
    """
    check_synthetic(cfg)
    if train_labels not in TRAIN_LABELS:
        raise ValueError(f"train_labels must be one of {', '.join(TRAIN_LABELS)}, got {train_labels!r}")
    rng = np.random.default_rng(cfg.data_seed)
    n_ans, n_types = cfg.n_answers, cfg.n_types

    # 1. Answer vocabulary: clusters of related answers, each owned by a question type.
    sizes = _cluster_sizes(rng, n_ans, cfg.cluster_min, cfg.cluster_max)
    n_clusters = len(sizes)
    cluster_type = np.arange(n_clusters) % n_types
    rng.shuffle(cluster_type)
    members, answer_cluster, answer_rank = [], np.zeros(n_ans, np.int64), np.zeros(n_ans, np.int64)
    start = 0
    for k, s in enumerate(sizes):
        ids = np.arange(start, start + s)
        members.append(ids)
        answer_cluster[ids] = k
        answer_rank[ids] = np.arange(s)
        start += s
    perm = rng.permutation(n_ans)  # answer ids are not grouped by cluster
    inv = np.argsort(perm)
    members = [perm[m] for m in members]
    answer_cluster, answer_rank = answer_cluster[inv], answer_rank[inv]
    popularity = [(np.arange(1, len(m) + 1, dtype=np.float64) ** -cfg.popularity_zipf) for m in members]
    popularity = [p / p.sum() for p in popularity]
    answers = [f"{TYPE_NAMES[cluster_type[answer_cluster[a]]]}{answer_cluster[a]}_{answer_rank[a]}" for a in range(n_ans)]

    # 2. Answer text embeddings: synonyms are near each other (what a language model would give).
    type_dir = rng.standard_normal((n_types, cfg.text_dim))
    centre = cfg.type_share * type_dir[cluster_type] + rng.standard_normal((n_clusters, cfg.text_dim))
    text = centre[answer_cluster] + cfg.synonym_noise * rng.standard_normal((n_ans, cfg.text_dim))
    text /= np.linalg.norm(text, axis=1, keepdims=True)

    # 3. Visual prototypes, one per cluster (the visual evidence is the concept, not the word),
    #    partly aligned with the cluster's text embedding, as CLIP features are with words.
    aligned = centre @ rng.standard_normal((cfg.text_dim, cfg.feat_dim))
    own = rng.standard_normal((n_clusters, cfg.feat_dim))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    proto = cfg.visual_signal * unit(cfg.alignment * unit(aligned) + math.sqrt(1 - cfg.alignment ** 2) * unit(own))
    clusters_of_type = [np.flatnonzero(cluster_type == t) for t in range(n_types)]

    # 4. Question vocabulary: wh-words, type words (3 per type) and filler words.
    type_words = [[f"{TYPE_NAMES[t]}", f"{TYPE_NAMES[t]}s", f"kind-of-{TYPE_NAMES[t]}"] for t in range(n_types)]
    fillers = [f"w{i}" for i in range(30)]
    qvocab = {"<pad>": PAD, "<unk>": UNK}
    for w in WH_WORDS + [w for ws in type_words for w in ws] + fillers:
        qvocab.setdefault(w, len(qvocab))
    q_len = 5

    def split(n: int, keep: Optional[int] = 1) -> TensorVideoQA:
        f, d = cfg.num_frames, cfg.feat_dim
        video = cfg.frame_noise * rng.standard_normal((n, f, d))
        qtype = rng.integers(0, n_types, size=n)
        question = np.zeros((n, q_len), np.int64)
        labels, ans_sets, cnt_sets = [], [], []
        for i in range(n):
            # the video shows a concept of the asked type and of shown_types - 1 other types
            t = int(qtype[i])
            others = rng.permutation([u for u in range(n_types) if u != t])[: cfg.shown_types - 1]
            shown = {}
            for u in [t, *others.tolist()]:  # each in a contiguous span of frames
                k = int(rng.choice(clusters_of_type[u]))
                length = int(rng.integers(3, 7))
                s = int(rng.integers(0, f - length + 1))
                video[i, s : s + length] += proto[k]
                shown[u] = k
            concepts, weights = [shown[t]], [1.0]
            if rng.random() < cfg.secondary_prob:  # a second, less visible concept of the asked type
                k2 = int(rng.choice(clusters_of_type[t]))
                if k2 != shown[t]:
                    length = int(rng.integers(2, 4))
                    s = int(rng.integers(0, f - length + 1))
                    video[i, s : s + length] += proto[k2]
                    concepts.append(k2)
                    weights = [1.0 - cfg.secondary_vote, cfg.secondary_vote]
            # annotators: pick a concept, then a member from this video's synonym preferences
            prefs = [rng.dirichlet(cfg.dirichlet * len(popularity[k]) * popularity[k]) for k in concepts]
            votes = []
            for _ in range(cfg.n_annotators):
                c = int(rng.choice(len(concepts), p=weights))
                votes.append(int(members[concepts[c]][rng.choice(len(prefs[c]), p=prefs[c])]))
            counter = collections.Counter(votes)
            # the insufficient label(s) (sec. 4.3): the most frequent answer(s); no random draw here
            labels.append([a for a, _ in counter.most_common(keep)])
            ans_sets.append(list(counter.keys()))
            cnt_sets.append(list(counter.values()))
            words = [WH_WORDS[int(rng.integers(len(WH_WORDS)))], type_words[t][int(rng.integers(3))]]
            words += [fillers[j] for j in rng.integers(0, len(fillers), size=q_len - 2)]
            question[i] = [qvocab[w] for w in words]
        mask = np.ones((n, f), dtype=bool)
        return TensorVideoQA(video.astype(np.float32), mask, question, None, qtype, labels, ans_sets, cnt_sets)

    train, val, test = split(cfg.n_train, TRAIN_LABELS[train_labels]), split(cfg.n_val), split(cfg.n_test)
    info = {
        "answer_cluster": answer_cluster,
        "cluster_type": cluster_type,
        "members": members,
        "n_clusters": n_clusters,
    }
    return VideoQAData(train, val, test, answers, qvocab, cfg.feat_dim,
                       torch.as_tensor(text, dtype=torch.float32), info)

