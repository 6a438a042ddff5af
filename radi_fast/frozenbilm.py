"""FrozenBiLM's video-QA data: iVQA, MSRVTT-QA, MSVD-QA, ActivityNet-QA and TGIF-FrameQA.

:func:`load_frozenbilm` reads a dataset's folder (the split CSVs, ``vocab.json`` and the CLIP
features file) into a :class:`~radi_fast.data.VideoQAData` whose items are those of
:mod:`radi_fast.data`. The features are memory-mapped (:class:`FeatureStore`), so DataLoader
workers share pages instead of copies. The file layout and the protocol (dropped
out-of-vocabulary training rows, TGIF's missing validation split) are in docs/training.md,
"Real data: FrozenBiLM's folders".
"""
from __future__ import annotations

import collections
import csv
import json
import os
import re
import tempfile
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import PAD, UNK, VideoQAData

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
                if train_labels in ("top1", "top2"):  # the insufficient label(s): the most frequent answer(s)
                    top = [a for a, _ in counter.most_common(1 if train_labels == "top1" else 2)]
                    label_ids = [a2id[a] for a in top if a in a2id]
                    if not label_ids:
                        continue  # like FrozenBiLM, drop training rows whose answer is out of vocabulary
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
    answer for the single-answer datasets), ``"top2"`` the two most frequent (those in the
    vocabulary), ``"all"`` keeps every annotated answer.

    Raises ``FileNotFoundError`` naming a missing file, ``ValueError`` for an unknown dataset or
    ``train_labels``, a malformed file (naming the file and the column, line or video id) or
    videos without features (unless ``allow_missing_features``).
    """
    if dataset not in FROZENBILM_SPLITS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(FROZENBILM_SPLITS)} or 'synthetic'")
    if train_labels not in ("top1", "top2", "all"):
        raise ValueError(f"train_labels must be 'top1', 'top2' or 'all', got {train_labels!r}")
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
