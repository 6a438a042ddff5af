"""Data for the RADI trainer: a seeded synthetic video-QA benchmark and FrozenBiLM-format loaders.

Every dataset here yields the same item (a dict) and shares one collate function, so the trainer
does not care where the data came from:

* ``video`` float32 [F, D] frame features (F = ``num_frames``, zero-padded), ``video_mask`` bool [F]
* ``question`` int64 [L] token ids (0 = padding), ``question_mask`` bool [L]
* ``qtype`` int question type (0 where the format has none)
* ``labels`` list of answer ids used for *training* (the insufficient labels)
* ``answers`` / ``counts``: the *full* set of correct answers and how many annotators gave each,
  used for evaluation (Acc@1, Hit@5, nDCG@5 are computed against it)
* ``index`` position of the item in its split

:class:`VideoQACollate` turns a list of items into dense tensors: ``targets`` [B, N] multi-hot of
the training labels and ``answer_counts`` [B, N] with the full sets.

The synthetic benchmark (:func:`make_synthetic`) is described in docs/training.md ("the generative
story"); the real-data loader (:func:`load_frozenbilm`) reads the CSV splits, ``vocab.json`` and
the CLIP features file of FrozenBiLM's iVQA, MSRVTT-QA, MSVD-QA, ActivityNet-QA and TGIF-FrameQA.
"""
from __future__ import annotations

import collections
import csv
import json
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

PAD, UNK = 0, 1


# --------------------------------------------------------------------------------------------
# Items, collate, sampler
# --------------------------------------------------------------------------------------------
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
    :class:`torch.utils.data.DistributedSampler` (which can be passed to the trainer instead).
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


def sample_frames(frames: np.ndarray, num_frames: int) -> Tuple[np.ndarray, np.ndarray]:
    """FrozenBiLM's frame sampling: frame ``j * n // num_frames`` for n > num_frames, else pad.

    Returns ``(video [num_frames, D] float32, mask [num_frames] bool)``.
    """
    n, d = frames.shape
    out = np.zeros((num_frames, d), dtype=np.float32)
    if n > num_frames:
        idx = (np.arange(num_frames) * n) // num_frames
        out[:] = frames[idx]
        k = num_frames
    else:
        out[:n] = frames
        k = n
    mask = np.zeros(num_frames, dtype=bool)
    mask[:k] = True
    return out, mask


# --------------------------------------------------------------------------------------------
# The synthetic benchmark
# --------------------------------------------------------------------------------------------
TYPE_NAMES = ["object", "colour", "action", "place", "person", "animal", "food", "sport"]
WH_WORDS = ["what", "which", "who", "where", "how"]


@dataclass
class SyntheticConfig:
    """Size and difficulty of the synthetic benchmark (the generative story is in docs/training.md)."""

    n_train: int = 5000         # training questions (one video each)
    n_val: int = 1000           # validation questions (full answer sets)
    n_test: int = 1000          # test questions (full answer sets)
    n_answers: int = 1000       # answer vocabulary size
    n_types: int = 6            # question types, each owning a share of the answer clusters
    cluster_min: int = 2        # synonym / related-answer cluster sizes are uniform in [min, max]
    cluster_max: int = 6
    feat_dim: int = 32          # frame feature dimension
    text_dim: int = 32          # answer "text embedding" dimension (a language model's stand-in)
    num_frames: int = 10
    frame_noise: float = 1.0    # std of the Gaussian noise on every frame feature
    visual_signal: float = 3.0  # norm of a concept's visual prototype added to the frames showing it
    alignment: float = 0.8      # how much a visual prototype follows its cluster's text embedding (CLIP-like)
    secondary_prob: float = 0.5  # chance that a second, less salient concept of the asked type is shown
    secondary_vote: float = 0.25  # chance that an annotator answers about that second concept
    popularity_zipf: float = 1.0  # within-cluster popularity of answer r is proportional to r^-s
    dirichlet: float = 3.0      # per-video variation of the annotators' synonym preferences
    synonym_noise: float = 0.7  # how far a synonym's text embedding is from its cluster's
    type_share: float = 1.0     # weight of the text direction shared by all answers of a question type
    shown_types: int = 3        # concepts shown per video: the asked type's and shown_types - 1 others
    n_annotators: int = 5       # annotators per question, as iVQA's five
    data_seed: int = 0          # seed of the generator (the benchmark itself)


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


def _cluster_sizes(rng: np.random.Generator, n: int, lo: int, hi: int) -> List[int]:
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(lo, hi + 1)))
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] < 1:
        sizes.pop()
        sizes[-1] += n - sum(sizes)
    return sizes


def make_synthetic(cfg: SyntheticConfig = SyntheticConfig()) -> VideoQAData:
    """Generate the seeded synthetic benchmark: the same ``cfg`` always gives the same data.

    See docs/training.md for the story. In short: answers come in clusters of synonyms/related
    answers owned by a question type; a video shows one concept (cluster) per type in a span of
    frames, sometimes a second one less visibly; five annotators answer each question with
    members of the shown clusters, and training keeps only the most frequent answer.
    """
    if cfg.n_types > len(TYPE_NAMES):
        raise ValueError(f"n_types must be <= {len(TYPE_NAMES)}, got {cfg.n_types}")
    if cfg.n_answers < 2 * cfg.n_types * cfg.cluster_max:
        raise ValueError(f"n_answers={cfg.n_answers} is too small for {cfg.n_types} types of clusters")
    if cfg.num_frames < 6:
        raise ValueError(f"the synthetic benchmark needs num_frames >= 6 (concepts span 3-6 frames), got {cfg.num_frames}")
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

    def split(n: int) -> TensorVideoQA:
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
            labels.append([counter.most_common(1)[0][0]])  # the insufficient label (sec. 4.3)
            ans_sets.append(list(counter.keys()))
            cnt_sets.append(list(counter.values()))
            words = [WH_WORDS[int(rng.integers(len(WH_WORDS)))], type_words[t][int(rng.integers(3))]]
            words += [fillers[j] for j in rng.integers(0, len(fillers), size=q_len - 2)]
            question[i] = [qvocab[w] for w in words]
        mask = np.ones((n, f), dtype=bool)
        return TensorVideoQA(video.astype(np.float32), mask, question, None, qtype, labels, ans_sets, cnt_sets)

    train, val, test = split(cfg.n_train), split(cfg.n_val), split(cfg.n_test)
    info = {
        "answer_cluster": answer_cluster,
        "cluster_type": cluster_type,
        "members": members,
        "n_clusters": n_clusters,
    }
    return VideoQAData(train, val, test, answers, qvocab, cfg.feat_dim,
                       torch.as_tensor(text, dtype=torch.float32), info)


# --------------------------------------------------------------------------------------------
# FrozenBiLM-format data
# --------------------------------------------------------------------------------------------
# split file names of FrozenBiLM's data folders (TGIF-FrameQA has no val split: FrozenBiLM
# validates on its test split, and so do we)
FROZENBILM_SPLITS = {
    "ivqa": ("train.csv", "val.csv", "test.csv"),
    "msrvtt": ("train.csv", "val.csv", "test.csv"),
    "msvd": ("train.csv", "val.csv", "test.csv"),
    "activitynet": ("train.csv", "val.csv", "test.csv"),
    "tgif": ("train_frameqa.csv", "test_frameqa.csv", "test_frameqa.csv"),
}
IVQA_ANSWER_COLUMNS = [f"answer{i}" for i in range(1, 6)]


def _require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def tokenize(text: str) -> List[str]:
    """Lower-case words: the question tokeniser (split on anything that is not a letter or digit)."""
    return re.findall(r"[a-z0-9]+", str(text).lower())


def build_question_vocab(questions: Sequence[str], min_count: int = 1) -> Dict[str, int]:
    """Whitespace vocabulary of the training questions; ids 0 and 1 are padding and unknown."""
    counts = collections.Counter(w for q in questions for w in tokenize(q))
    vocab = {"<pad>": PAD, "<unk>": UNK}
    for w, c in sorted(counts.items(), key=lambda x: (-x[1], x[0])):
        if c >= min_count:
            vocab[w] = len(vocab)
    return vocab


def encode_question(text: str, vocab: Dict[str, int], max_len: int) -> np.ndarray:
    ids = [vocab.get(w, UNK) for w in tokenize(text)][:max_len] or [UNK]
    out = np.zeros(max_len, np.int64)
    out[: len(ids)] = ids
    return out


def read_vocab(path: str) -> List[str]:
    """Read FrozenBiLM's ``vocab.json`` (answer -> index) into an id -> answer list."""
    _require_file(path, "answer vocabulary")
    try:
        with open(path) as f:
            a2id = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(a2id, dict) or not a2id:
        raise ValueError(f"{path}: expected a non-empty JSON object mapping answer -> index")
    ids = sorted(a2id.values()) if all(isinstance(v, int) for v in a2id.values()) else None
    if ids != list(range(len(a2id))):
        raise ValueError(f"{path}: answer indices must be the integers 0..{len(a2id) - 1}, each used once")
    answers = [""] * len(a2id)
    for a, i in a2id.items():
        answers[i] = a
    return answers


def read_qa_csv(path: str) -> List[dict]:
    """Read a FrozenBiLM split CSV; needs ``video_id``, ``question`` and ``answer`` or answer1..5."""
    _require_file(path, "split CSV")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        for c in ("video_id", "question"):
            if c not in cols:
                raise ValueError(f"{path}: missing column {c!r} (found columns: {cols})")
        if "answer" not in cols and not all(c in cols for c in IVQA_ANSWER_COLUMNS):
            missing = [c for c in IVQA_ANSWER_COLUMNS if c not in cols]
            raise ValueError(f"{path}: needs column 'answer' or the iVQA columns answer1..answer5 "
                             f"(missing {missing}; found columns: {cols})")
        rows = []
        for line, row in enumerate(reader, start=2):
            if None in row or any(v is None for v in row.values()):
                raise ValueError(f"{path}, line {line}: wrong number of fields")
            if not row["video_id"].strip():
                raise ValueError(f"{path}, line {line}: empty 'video_id'")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


class FeatureStore:
    """Frame features of every video in one memory-mapped array: workers share pages, not copies.

    ``path`` is FrozenBiLM's torch ``.pth`` (a dict video_id -> [n_frames, D] tensor), an ``.npz``
    with one array per video id, or an ``.npy`` of stacked frames [total_frames, D] with a
    ``<name>.index.json`` beside it mapping video_id -> [offset, n_frames] (the layout this class
    itself writes). A ``.pth``/``.npz`` is converted once into that layout in ``cache_dir``
    (default: a ``.radi_cache`` folder next to the file, or the temp dir if that is read-only);
    afterwards the array is opened with ``np.load(mmap_mode='r')``, so a DataLoader worker only
    reads the frames it needs.
    """

    def __init__(self, path: str, cache_dir: Optional[str] = None):
        _require_file(path, "features file")
        self.path = path
        ext = os.path.splitext(path)[1].lower()
        if ext == ".npy":
            array_path, index_path = path, os.path.splitext(path)[0] + ".index.json"
            _require_file(index_path, f"index of the features array {path}")
        elif ext in (".pth", ".pt", ".npz"):
            array_path, index_path = self._convert(path, cache_dir)
        else:
            raise ValueError(f"{path}: unsupported features file type {ext!r} (use .pth, .pt, .npz or .npy)")
        try:
            with open(index_path) as f:
                self.index = {k: (int(o), int(n)) for k, (o, n) in json.load(f).items()}
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{index_path}: malformed features index ({e})") from None
        self.array_path = array_path
        try:
            self.array = np.load(array_path, mmap_mode="r")
        except ValueError as e:
            raise ValueError(f"{array_path}: cannot read the features array ({e})") from None
        if self.array.ndim != 2:
            raise ValueError(f"{array_path}: expected a 2-D [frames, dim] array, got shape {self.array.shape}")
        self.dim = int(self.array.shape[1])

    @staticmethod
    def _load_dict(path: str) -> Dict[str, np.ndarray]:
        try:
            if path.lower().endswith(".npz"):
                with np.load(path, allow_pickle=False) as z:
                    feats = {k: z[k] for k in z.files}
            else:
                feats = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt or foreign file: say which one
            raise ValueError(f"{path}: cannot read features ({type(e).__name__}: {e})") from None
        if not isinstance(feats, dict) or not feats:
            raise ValueError(f"{path}: expected a non-empty dict video_id -> [n_frames, dim] features")
        out, dim = {}, None
        for k, v in feats.items():
            v = v.float().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float32)
            if v.ndim == 1:
                v = v[None]
            if v.ndim != 2 or (dim is not None and v.shape[1] != dim) or v.shape[0] == 0:
                raise ValueError(f"{path}: features of video {k!r} have shape {v.shape}; "
                                 f"expected [n_frames, {dim or 'dim'}]")
            dim = v.shape[1]
            out[str(k)] = v.astype(np.float32, copy=False)
        return out

    @classmethod
    def _convert(cls, path: str, cache_dir: Optional[str]) -> Tuple[str, str]:
        st = os.stat(path)
        stem = f"{os.path.basename(path)}.{st.st_size}.{int(st.st_mtime)}"
        for d in ([cache_dir] if cache_dir else [os.path.join(os.path.dirname(os.path.abspath(path)), ".radi_cache"),
                                                 os.path.join(tempfile.gettempdir(), "radi_cache")]):
            array_path, index_path = os.path.join(d, stem + ".npy"), os.path.join(d, stem + ".index.json")
            if os.path.isfile(array_path) and os.path.isfile(index_path):
                return array_path, index_path
            try:
                os.makedirs(d, exist_ok=True)
                feats = cls._load_dict(path)
                index, offset = {}, 0
                for k, v in feats.items():
                    index[k] = [offset, int(v.shape[0])]
                    offset += int(v.shape[0])
                dim = next(iter(feats.values())).shape[1]
                tmp = f"{array_path}.tmp{os.getpid()}.npy"  # per process: concurrent ranks never share one
                stacked = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                    shape=(offset, dim))
                for k, v in feats.items():
                    o, n = index[k]
                    stacked[o : o + n] = v
                stacked.flush()
                del stacked
                _atomic_write_json(index_path, index)
                os.replace(tmp, array_path)
                return array_path, index_path
            except PermissionError:
                continue
        raise PermissionError(f"cannot write a features cache for {path}; pass cache_dir")

    def __getstate__(self):  # pickled by path (spawned DataLoader workers re-open the memory map)
        state = dict(self.__dict__)
        state["array"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.array = np.load(self.array_path, mmap_mode="r")

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.index

    def get(self, video_id: str) -> np.ndarray:
        o, n = self.index[video_id]
        return self.array[o : o + n]


def _atomic_write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


class FrozenBiLMVideoQA(Dataset):
    """One split of a FrozenBiLM-format dataset (see :func:`load_frozenbilm`)."""

    def __init__(self, rows: List[dict], answers: List[str], features: FeatureStore, qvocab: Dict[str, int],
                 *, train: bool, num_frames: int = 10, max_question_len: int = 20,
                 train_labels: str = "top1", allow_missing_features: bool = False, path: str = "",
                 type_map: Optional[Dict[str, int]] = None):
        a2id = {a: i for i, a in enumerate(answers)}
        self.features, self.num_frames = features, num_frames
        self.video_ids, self.questions, self.qtypes = [], [], []
        self.labels, self.answers, self.counts = [], [], []
        missing = sorted({r["video_id"] for r in rows if r["video_id"] not in features})
        if missing and not allow_missing_features:
            raise ValueError(f"{path}: {len(missing)} video ids have no features in {features.path} "
                             f"(first: {missing[:5]}); pass allow_missing_features=True "
                             "(--allow_missing_features) to use zero features for them, as FrozenBiLM does")
        if missing:
            warnings.warn(f"{path}: {len(missing)} videos without features use zero features")
        for r in rows:
            raw = [r[c] for c in IVQA_ANSWER_COLUMNS] if "answer" not in r else [r["answer"]]
            counter = collections.Counter(a.strip() for a in raw if a is not None and a.strip())
            in_vocab = [(a2id[a], c) for a, c in counter.items() if a in a2id]
            if train:
                if train_labels == "top1":  # the insufficient label: the most frequent answer
                    top = counter.most_common(1)[0][0] if counter else None
                    if top not in a2id:
                        continue  # like FrozenBiLM, drop training rows whose answer is out of vocabulary
                    label_ids = [a2id[top]]
                else:
                    label_ids = [i for i, _ in in_vocab]
                    if not label_ids:
                        continue
            else:
                label_ids = [i for i, _ in in_vocab]  # evaluation keeps every row
            self.video_ids.append(r["video_id"])
            self.questions.append(encode_question(r["question"], qvocab, max_question_len))
            t = r.get("type", "") or ""
            self.qtypes.append(int(t) if t.strip().lstrip("-").isdigit() else (type_map or {}).get(t, 0))
            self.labels.append(label_ids)
            self.answers.append([i for i, _ in in_vocab])
            self.counts.append([c for _, c in in_vocab])
        if not self.labels:
            raise ValueError(f"{path}: no usable rows (are the answers in vocab.json?)")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        vid = self.video_ids[i]
        frames = self.features.get(vid) if vid in self.features else np.zeros((1, self.features.dim), np.float32)
        video, mask = sample_frames(np.asarray(frames, dtype=np.float32), self.num_frames)
        q = torch.from_numpy(self.questions[i])
        return {
            "video": torch.from_numpy(video),
            "video_mask": torch.from_numpy(mask),
            "question": q,
            "question_mask": q != PAD,
            "qtype": self.qtypes[i],
            "labels": self.labels[i],
            "answers": self.answers[i],
            "counts": self.counts[i],
            "index": i,
        }


def load_frozenbilm(dataset: str, data_dir: Optional[str] = None, *, features: Optional[str] = None,
                    vocab: Optional[str] = None, train_csv: Optional[str] = None, val_csv: Optional[str] = None,
                    test_csv: Optional[str] = None, num_frames: int = 10, max_question_len: int = 20,
                    train_labels: str = "top1", cache_dir: Optional[str] = None,
                    allow_missing_features: bool = False) -> VideoQAData:
    """Load one of FrozenBiLM's video-QA datasets from its folder.

    ``dataset`` is ``ivqa``, ``msrvtt``, ``msvd``, ``activitynet`` or ``tgif``. By default the
    files are FrozenBiLM's names inside ``data_dir``: the split CSVs (``train.csv``/``val.csv``/
    ``test.csv``; TGIF: ``train_frameqa.csv``/``test_frameqa.csv``), ``vocab.json`` and
    ``clipvitl14.pth``; each can be overridden. ``train_labels="top1"`` keeps only the most
    frequent answer of a training question (the paper's sec. 4.3 protocol; the same as the only
    answer for the single-answer datasets), ``"all"`` keeps every annotated answer.
    """
    if dataset not in FROZENBILM_SPLITS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(FROZENBILM_SPLITS)} or 'synthetic'")
    if train_labels not in ("top1", "all"):
        raise ValueError(f"train_labels must be 'top1' or 'all', got {train_labels!r}")
    names = FROZENBILM_SPLITS[dataset]
    if data_dir is None and None in (features, vocab, train_csv, val_csv, test_csv):
        raise ValueError("pass data_dir (--data_dir) or every file path (--features, --vocab, --*_csv)")
    join = lambda name: os.path.join(data_dir, name)  # noqa: E731
    paths = [train_csv or join(names[0]), val_csv or join(names[1]), test_csv or join(names[2])]
    answers = read_vocab(vocab or join("vocab.json"))
    store = FeatureStore(features or join("clipvitl14.pth"), cache_dir=cache_dir)
    rows = [read_qa_csv(p) for p in paths]
    qvocab = build_question_vocab([r["question"] for r in rows[0]])
    type_names = sorted({r.get("type", "") for r in rows[0]} - {""})
    type_map = {t: i for i, t in enumerate(type_names)}
    splits = [FrozenBiLMVideoQA(r, answers, store, qvocab, train=(i == 0), num_frames=num_frames,
                                max_question_len=max_question_len, train_labels=train_labels,
                                allow_missing_features=allow_missing_features, path=p, type_map=type_map)
              for i, (r, p) in enumerate(zip(rows, paths))]
    return VideoQAData(splits[0], splits[1], splits[2], answers, qvocab, store.dim)
