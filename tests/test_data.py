"""The synthetic benchmark and the FrozenBiLM-format loaders (on fixture files made here)."""
import collections
import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from radi_fast.data import EpochSampler, VideoQACollate
from radi_fast.frozenbilm import FeatureStore, load_frozenbilm, sample_frames
from radi_fast.synthetic import SyntheticConfig, make_synthetic

SMALL = SyntheticConfig(n_train=120, n_val=40, n_test=40, n_answers=200)


# ------------------------------------------------------------------ synthetic benchmark
def _arrays(split):
    return split.video.numpy(), split.question.numpy(), split.labels, split.answers, split.counts


def test_synthetic_is_deterministic():
    a, b = make_synthetic(SMALL), make_synthetic(SMALL)
    for sa, sb in [(a.train, b.train), (a.val, b.val), (a.test, b.test)]:
        va, qa, la, aa, ca = _arrays(sa)
        vb, qb, lb, ab, cb = _arrays(sb)
        np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(qa, qb)
        assert (la, aa, ca) == (lb, ab, cb)
    assert torch.equal(a.answer_features, b.answer_features)
    c = make_synthetic(SyntheticConfig(**{**SMALL.__dict__, "data_seed": 1}))
    assert not np.array_equal(c.train.video.numpy(), a.train.video.numpy())


def test_synthetic_insufficient_labels_and_structure():
    d = make_synthetic(SMALL)
    cluster = d.info["answer_cluster"]
    assert d.n_answers == 200 and d.answer_features.shape == (200, SMALL.text_dim)
    multi = 0
    for split in (d.train, d.val, d.test):
        for labels, answers, counts in zip(split.labels, split.answers, split.counts):
            assert sum(counts) == SMALL.n_annotators and 1 <= len(answers) <= 5
            top = collections.Counter(dict(zip(answers, counts))).most_common(1)[0]
            assert len(labels) == 1 and dict(zip(answers, counts))[labels[0]] == top[1]  # most frequent only
            assert len({cluster[a] for a in answers}) <= 2  # the asked concept and maybe a second one
            multi += len(answers) > 1
    assert multi > 0.5 * (len(d.train) + len(d.val) + len(d.test))  # most questions have several answers
    # synonyms' text embeddings are closer than unrelated answers'
    e = d.answer_features
    sim = e @ e.t()
    same = torch.as_tensor(cluster[:, None] == cluster[None, :]) & ~torch.eye(200, dtype=torch.bool)
    assert sim[same].mean() > sim[~same].mean() + 0.2


def test_synthetic_train_labels_keep_the_most_frequent_answers():
    one, two, every = (make_synthetic(SMALL, train_labels=k) for k in ("top1", "top2", "all"))
    for split in ("train", "val", "test"):
        a, b = getattr(one, split), getattr(two, split)
        np.testing.assert_array_equal(a.video.numpy(), b.video.numpy())
        assert (a.answers, a.counts) == (b.answers, b.counts) == (getattr(every, split).answers,
                                                                  getattr(every, split).counts)
    assert one.val.labels == two.val.labels  # evaluation keeps the full sets, whatever training keeps
    n2 = 0
    for l1, l2, la, answers, counts in zip(one.train.labels, two.train.labels, every.train.labels,
                                           one.train.answers, one.train.counts):
        ranked = [a for a, _ in collections.Counter(dict(zip(answers, counts))).most_common()]
        assert l2 == ranked[:2] and l2[0] == l1[0] and len(l1) == 1 and sorted(la) == sorted(answers)
        n2 += len(l2) == 2
    assert n2 > 0.5 * len(two.train)
    with pytest.raises(ValueError, match="train_labels"):
        make_synthetic(SMALL, train_labels="top3")


def test_collate_dense_targets():
    d = make_synthetic(SMALL)
    batch = VideoQACollate(d.n_answers)([d.val[i] for i in range(4)])
    assert batch["video"].shape == (4, 10, SMALL.feat_dim) and batch["targets"].shape == (4, 200)
    assert torch.equal(batch["targets"].sum(1), torch.ones(4))
    for i in range(4):
        assert batch["answer_counts"][i].sum() == 5
        assert batch["targets"][i, d.val.labels[i][0]] == 1


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    first = list(s)
    s.set_epoch(2)
    assert list(s) != first
    s.set_epoch(1)
    assert list(s) == first and sorted(first) == list(range(10))
    s.set_start(4)
    assert list(s) == first[4:] and len(s) == 6
    shards = [EpochSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    for sh in shards:
        sh.set_epoch(1)
    got = [i for sh in shards for i in sh]
    assert len(got) == 12 and set(got) == set(range(10))  # padded to equal shares, every index seen


def test_sample_frames_uniform_and_padding():
    frames = np.arange(25 * 2, dtype=np.float32).reshape(25, 2)
    video, mask = sample_frames(frames, 10)
    np.testing.assert_array_equal(video, frames[[j * 25 // 10 for j in range(10)]])
    assert mask.all()
    video, mask = sample_frames(frames[:3], 10)
    np.testing.assert_array_equal(video[:3], frames[:3])
    assert (video[3:] == 0).all() and mask.tolist() == [True] * 3 + [False] * 7


# ------------------------------------------------------------------ FrozenBiLM fixtures
DIM = 8
VIDEOS = {"v1": 25, "v2": 3, "v3": 10, "v4": 12}
VOCAB = ["table", "desk", "car", "baby", "dog"]


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {v: torch.randn(n, DIM, generator=g) for v, n in VIDEOS.items()}


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _make_dataset(root, kind):
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps({a: i for i, a in enumerate(VOCAB)}))
    torch.save(_features(), root / "clipvitl14.pth")
    if kind == "ivqa":
        header = ["video_id", "start", "end", "question", "answer1", "answer2", "answer3", "answer4", "answer5"]
        rows = [["v1", 0, 5, "What is on the table?", "table", "desk", "table", "cutting table", "table"],
                ["v2", 0, 5, "who is in the car", "car", "baby", "baby", "car", "baby"],
                ["v3", 0, 5, "What animal?", "unicorn", "unicorn", "dog", "unicorn", "cat"],  # top1 not in vocab
                ["v4", 1, 4, "what is it", "dog", "dog", "dog", "dog", "dog"]]
        for split in ("train", "val", "test"):
            _write_csv(root / f"{split}.csv", header, rows)
    else:
        header = ["video_id", "question", "answer", "type"]
        rows = [["v1", "what is on the table", "desk", "0"], ["v2", "who sits in the car", "baby", "4"],
                ["v3", "what animal is it", "zebra", "0"], ["v4", "what is it", "dog", "0"]]
        names = ("train_frameqa.csv", "test_frameqa.csv") if kind == "tgif" else ("train.csv", "val.csv", "test.csv")
        for name in names:
            _write_csv(root / name, header, rows)
    return root


@pytest.mark.parametrize("kind", ["ivqa", "msrvtt", "msvd", "activitynet", "tgif"])
def test_frozenbilm_formats(tmp_path, kind):
    data = load_frozenbilm(kind, str(_make_dataset(tmp_path / kind, kind)))
    assert data.answers == VOCAB and data.feat_dim == DIM
    assert len(data.train) == 3 and len(data.test) == 4  # training drops the out-of-vocabulary row
    item = data.train[0]
    assert item["video"].shape == (10, DIM) and item["video_mask"].all()
    np.testing.assert_allclose(item["video"].numpy(), _features()["v1"].numpy()[[j * 25 // 10 for j in range(10)]])
    short = data.train[1]
    assert short["video_mask"].tolist() == [True] * 3 + [False] * 7 and (short["video"][3:] == 0).all()
    q = item["question"][item["question_mask"]].tolist()
    assert len(q) == 5 and all(t >= 2 for t in q)  # "what is on the table", all known words
    batch = VideoQACollate(len(VOCAB))([data.test[i] for i in range(4)])
    if kind == "ivqa":
        assert item["labels"] == [VOCAB.index("table")]  # the most frequent of the five answers only
        assert sorted(zip(item["answers"], item["counts"])) == [(0, 3), (1, 1)]  # "cutting table" not in vocab
        assert data.train[1]["labels"] == [VOCAB.index("baby")]
        assert batch["answer_counts"][2].tolist() == [0, 0, 0, 0, 1]  # unicorn dropped, dog kept for eval
    else:
        assert item["labels"] == [VOCAB.index("desk")] and item["counts"] == [1]
        assert data.train[1]["qtype"] == 4
        assert batch["answer_counts"][2].sum() == 0  # zebra: out of vocabulary, counted as wrong


def test_ivqa_train_labels_all(tmp_path):
    data = load_frozenbilm("ivqa", str(_make_dataset(tmp_path, "ivqa")), train_labels="all")
    assert sorted(data.train[0]["labels"]) == [0, 1]
    assert len(data.train) == 4  # the unicorn row keeps its in-vocabulary "dog"


def test_ivqa_train_labels_top2(tmp_path):
    data = load_frozenbilm("ivqa", str(_make_dataset(tmp_path, "ivqa")), train_labels="top2")
    v = VOCAB.index
    # the two most frequent answers, those in the vocabulary: the unicorn row keeps its runner-up "dog"
    assert [data.train[i]["labels"] for i in range(len(data.train))] == [
        [v("table"), v("desk")], [v("baby"), v("car")], [v("dog")], [v("dog")]]


@pytest.mark.parametrize("fmt", ["pth", "npz", "npy"])
def test_feature_store_formats_are_memory_mapped(tmp_path, fmt):
    feats = _features(1)
    if fmt == "pth":
        path = tmp_path / "f.pth"
        torch.save(feats, path)
    elif fmt == "npz":
        path = tmp_path / "f.npz"
        np.savez(path, **{k: v.numpy() for k, v in feats.items()})
    else:
        path = tmp_path / "f.npy"
        index, offset = {}, 0
        for k, v in feats.items():
            index[k] = [offset, v.shape[0]]
            offset += v.shape[0]
        np.save(path, np.concatenate([v.numpy() for v in feats.values()]))
        (tmp_path / "f.index.json").write_text(json.dumps(index))
    store = FeatureStore(str(path), cache_dir=str(tmp_path / "cache"))
    assert isinstance(store.array, np.memmap) and store.dim == DIM
    for k, v in feats.items():
        np.testing.assert_array_equal(store.get(k), v.numpy())
    clone = pickle.loads(pickle.dumps(store))  # spawned workers get the path, not a copy of the array
    assert isinstance(clone.array, np.memmap) and len(pickle.dumps(store)) < 10_000
    np.testing.assert_array_equal(clone.get("v1"), feats["v1"].numpy())
    if fmt != "npy":  # converted once, then reused
        cached = sorted(os.listdir(tmp_path / "cache"))
        mtime = os.path.getmtime(tmp_path / "cache" / cached[0])
        FeatureStore(str(path), cache_dir=str(tmp_path / "cache"))
        assert sorted(os.listdir(tmp_path / "cache")) == cached
        assert os.path.getmtime(tmp_path / "cache" / cached[0]) == mtime


def test_loader_with_workers(tmp_path):
    data = load_frozenbilm("msvd", str(_make_dataset(tmp_path, "msvd")))
    loader = DataLoader(data.test, batch_size=2, num_workers=2, collate_fn=VideoQACollate(len(VOCAB)))
    batches = list(loader)
    assert sum(b["video"].shape[0] for b in batches) == 4


# ------------------------------------------------------------------ clear errors
def test_missing_files(tmp_path):
    root = _make_dataset(tmp_path, "ivqa")
    os.remove(root / "val.csv")
    with pytest.raises(FileNotFoundError, match="val.csv"):
        load_frozenbilm("ivqa", str(root))
    with pytest.raises(FileNotFoundError, match="nofeat.pth"):
        load_frozenbilm("msvd", str(root), features=str(root / "nofeat.pth"))
    with pytest.raises(FileNotFoundError, match="vocab"):
        load_frozenbilm("msvd", str(tmp_path / "nowhere"))


def test_malformed_files(tmp_path):
    root = _make_dataset(tmp_path, "msrvtt")
    _write_csv(root / "val.csv", ["video_id", "query", "answer"], [["v1", "what", "dog"]])
    with pytest.raises(ValueError, match=r"val\.csv.*'question'"):
        load_frozenbilm("msrvtt", str(root))
    _write_csv(root / "val.csv", ["video_id", "question", "answer1", "answer2"], [["v1", "what", "dog", "dog"]])
    with pytest.raises(ValueError, match=r"val\.csv.*answer3"):
        load_frozenbilm("msrvtt", str(root))
    _write_csv(root / "val.csv", ["video_id", "question", "answer"], [])
    with pytest.raises(ValueError, match=r"val\.csv: no rows"):
        load_frozenbilm("msrvtt", str(root))

    root = _make_dataset(tmp_path / "b", "msrvtt")
    (root / "vocab.json").write_text("{not json")
    with pytest.raises(ValueError, match="vocab.json: not valid JSON"):
        load_frozenbilm("msrvtt", str(root))
    (root / "vocab.json").write_text(json.dumps({"a": 0, "b": 2}))
    with pytest.raises(ValueError, match="vocab.json: answer indices"):
        load_frozenbilm("msrvtt", str(root))

    root = _make_dataset(tmp_path / "c", "msrvtt")
    torch.save([1, 2, 3], root / "clipvitl14.pth")
    with pytest.raises(ValueError, match="clipvitl14.pth: expected a non-empty dict"):
        load_frozenbilm("msrvtt", str(root))
    (root / "clipvitl14.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="clipvitl14.pth: cannot read features"):
        load_frozenbilm("msrvtt", str(root))
    torch.save({"v1": torch.zeros(3, 4), "v2": torch.zeros(3, 5)}, root / "clipvitl14.pth")
    with pytest.raises(ValueError, match="video 'v2' have shape"):
        load_frozenbilm("msrvtt", str(root))


def test_videos_without_features(tmp_path):
    root = _make_dataset(tmp_path, "msvd")
    feats = _features()
    del feats["v3"]
    torch.save(feats, root / "clipvitl14.pth")
    with pytest.raises(ValueError, match=r"1 video ids have no features.*'v3'"):
        load_frozenbilm("msvd", str(root))
    with pytest.warns(UserWarning, match="zero features"):
        data = load_frozenbilm("msvd", str(root), allow_missing_features=True)
    item = data.test[2]
    assert (item["video"] == 0).all() and item["video_mask"].tolist() == [True] + [False] * 9


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_frozenbilm("nope", "x")
