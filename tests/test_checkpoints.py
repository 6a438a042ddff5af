"""Checkpoints: loaded with weights_only=True, verified by a checksum over their payload, stage and
settings; a damaged or foreign file is reported naming it and never reused; --resume falls back
to the previous good checkpoint of the stage, and a run killed with SIGKILL mid-save resumes
exactly."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from radi_fast import train as T
from radi_fast.checkpoint import CheckpointError, digest, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from radi_fast.config import config_from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 2 steps per epoch; --save_every 1 also checkpoints after the first step of every epoch
TINY = {"n_train": 64, "n_val": 32, "n_test": 32, "n_answers": 120, "d_model": 16, "n_layers": 2, "n_heads": 2,
        "batch_size": 32, "teacher_epochs": 1, "student_epochs": 1, "mc_samples": 3, "hot": 10, "cold": 5,
        "top_k": 20, "progress": False, "curves": False}


def tiny(out_dir, **kw):
    return config_from_dict({**TINY, "out_dir": str(out_dir), **kw})


def ck(out_dir, stage, suffix=""):
    return os.path.join(out_dir, "checkpoints", f"{stage}.pt{suffix}")


def flip(path, at=None, n=64):
    """Invert ``n`` bytes of the file at offset ``at`` (default: its middle)."""
    data = bytearray(open(path, "rb").read())
    at = len(data) // 2 if at is None else at
    data[at:at + n] = bytes(b ^ 0xFF for b in data[at:at + n])
    open(path, "wb").write(bytes(data))


def flip_weights(path, n=64):
    """Invert ``n`` bytes in the middle of the largest tensor's data: a file that still reads (torch's
    zip reader does not check the records' CRC), with wrong numbers that only the checksum sees."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
    flip(path, info.header_offset + 30 + name_len + extra_len + info.file_size // 2 - n // 2, n)


def resume(out_dir, capsys, **kw):
    cfg = {**TINY, "out_dir": str(out_dir), **kw}
    code = T.main(["--config", _write(os.path.join(os.path.dirname(str(out_dir)), "c.json"), cfg), "--resume"])
    return code, capsys.readouterr().err


def _write(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
    return path


# ------------------------------------------------------------------ the format
def test_checkpoints_are_plain_data_with_a_checksum(tmp_path):
    T.run(tiny(tmp_path, schemes="ctkd"))
    state = torch.load(ck(tmp_path, "student-ctkd"), weights_only=True)  # no pickled code needed
    assert state["stage"] == "student-ctkd" and state["fingerprint"]["scheme.spec"] == "ctkd"
    assert state["sha256"] == digest(state) and len(state["sha256"]) == 64
    assert isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)
    assert load_checkpoint(ck(tmp_path, "student-ctkd"), stage="student-ctkd")["done"] is True


def test_the_checksum_covers_every_value():
    state = {"stage": "teacher", "fingerprint": {"optim.lr": 0.002}, "model": {"w": torch.arange(6.0)},
             "history": [{"epoch": 1, "train_loss": 1.5}], "done": False}
    base = digest(state)
    variants = [{**state, "stage": "individual"}, {**state, "fingerprint": {"optim.lr": 0.003}},
                {**state, "model": {"w": torch.arange(6.0).reshape(2, 3)}},
                {**state, "model": {"w": torch.arange(6.0).double()}}, {**state, "done": True},
                {**state, "history": [{"epoch": 1, "train_loss": 1.5000000001}]}]
    w = torch.arange(6.0)
    w[3] = -488.5
    variants.append({**state, "model": {"w": w}})
    assert len({base} | {digest(v) for v in variants}) == len(variants) + 1


def test_rng_state_round_trips_through_weights_only(tmp_path):
    import random

    import numpy as np
    gen = torch.Generator().manual_seed(3)
    random.seed(1), np.random.seed(2), torch.manual_seed(3), np.random.standard_normal()  # a cached gaussian
    save_checkpoint(str(tmp_path / "r.pt"), {"rng": rng_state(gen)})
    expected = (random.random(), np.random.standard_normal(), torch.rand(1), torch.rand(1, generator=gen))
    set_rng_state(load_checkpoint(str(tmp_path / "r.pt"))["rng"], gen)
    assert (random.random(), np.random.standard_normal(), torch.rand(1), torch.rand(1, generator=gen)) == expected


# ------------------------------------------------------------------ damaged files, no earlier checkpoint: refused
@pytest.mark.parametrize("damage,stage,message", [
    ("flip_weights", "student-radi_p", "is corrupt: its contents do not match its checksum"),
    ("flip_middle", "student-radi_p", ""),
    ("truncate", "teacher", "cannot be read: it is truncated"),
    ("swap", "teacher", "belongs to stage 'individual', not 'teacher'"),
    ("empty", "individual", "cannot be read"),
])
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, capsys, damage, stage, message):
    T.run(tiny(tmp_path / "run", schemes="baseline,radi_p"))
    path = ck(tmp_path / "run", stage)
    if damage == "flip_weights":
        flip_weights(path)
        state = torch.load(path, weights_only=True)  # it still loads: only the checksum tells
        assert state["sha256"] != digest(state)
    elif damage == "flip_middle":  # the case: wherever the middle falls, it is refused
        flip(path)
    elif damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == "swap":
        shutil.copy(ck(tmp_path / "run", "individual"), path)
    else:
        open(path, "wb").close()
    damaged = open(path, "rb").read()
    capsys.readouterr()
    code, err = resume(tmp_path / "run", capsys, schemes="baseline,radi_p")
    assert code == 2
    assert f"error: checkpoint {path} {message}" in err and "no earlier good checkpoint" in err
    assert f"[{stage}] finished" not in err and "results in" not in err
    assert open(path, "rb").read() == damaged  # left where it is for the user to look at
    with pytest.raises(CheckpointError, match=message.split(":")[0] or "is corrupt|cannot be read"):
        load_checkpoint(path, stage=stage)


def test_a_checkpoint_from_before_the_checksum_is_refused(tmp_path):
    torch.save({"model": {}, "done": True}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="old.pt has no checksum"):
        load_checkpoint(str(tmp_path / "old.pt"))
    torch.save({"rng": __import__("numpy").zeros(3)}, tmp_path / "pickled.pt")  # would need unpickling numpy
    with pytest.raises(CheckpointError, match="pickled.pt cannot be read"):
        load_checkpoint(str(tmp_path / "pickled.pt"))


# ------------------------------------------------------------------ with an earlier checkpoint: fall back, exactly
def test_resume_falls_back_to_the_previous_good_checkpoint(tmp_path, capsys):
    kw = dict(teacher_epochs=2, student_epochs=2, schemes="radi_l:list_loss=stlistnet,radi_p")
    straight = T.run(tiny(tmp_path / "a", **kw))
    with pytest.raises(T.Halted):  # stops inside the second RADI-P epoch: every stage has a .prev
        T.run(tiny(tmp_path / "b", halt_after_steps=15, save_every=1, **kw))
    b = tmp_path / "b"
    flip_weights(ck(b, "student-radi_l_list_loss=stlistnet"))     # finished: falls back to epoch 2's middle
    shutil.copy(ck(b, "individual"), ck(b, "teacher"))            # another stage's file
    with open(ck(b, "student-radi_p"), "r+b") as f:                # unfinished: falls back one save
        f.truncate(1000)
    capsys.readouterr()
    code, err = resume(b, capsys, save_every=1, **kw)
    assert code == 0, err
    for name, stage, what in (("teacher", "teacher", "belongs to stage 'individual'"),
                              ("student-radi_l:list_loss=stlistnet", "student-radi_l_list_loss=stlistnet", "is corrupt"),
                              ("student-radi_p", "student-radi_p", "cannot be read")):
        assert f"warning: [{name}] checkpoint {ck(b, stage)} {what}" in err
        assert f"moved {ck(b, stage)} to {ck(b, stage, '.corrupt')}" in err
        assert f"[{name}] resuming from the previous checkpoint {ck(b, stage, '.prev')}" in err
        assert os.path.exists(ck(b, stage, ".corrupt"))
    resumed = json.loads((b / "results.json").read_text())
    for part in ("stages", "schemes"):
        for name, r in straight[part].items():
            assert resumed[part][name]["test"] == r["test"], name
            assert [h["train_loss"] for h in resumed[part][name]["history"]] == \
                [h["train_loss"] for h in r["history"]], name
    for stage in ("teacher", "individual", "student-radi_l_list_loss=stlistnet", "student-radi_p"):
        x, y = (torch.load(ck(d, stage), weights_only=True)["model"] for d in (tmp_path / "a", b))
        assert all(torch.equal(x[k], y[k]) for k in x), stage


# ------------------------------------------------------------------ SIGKILL in the middle of a save
DRIVER = r"""
import os, signal, sys
import radi_fast.checkpoint as C
from radi_fast import train as T
where, n = sys.argv[1], int(sys.argv[2])
count = [0]
if where == "write":  # killed while <stage>.pt.tmp is half written
    real_write = C._write
    def write(path, state):
        count[0] += 1
        real_write(path, state)
        if count[0] == n:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    C._write = write
else:  # killed between "<stage>.pt -> <stage>.pt.prev" and "<stage>.pt.tmp -> <stage>.pt"
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if str(dst).endswith(".pt.prev"):
            count[0] += 1
            if count[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
sys.exit(T.main(sys.argv[3:]))
"""


def test_sigkill_mid_save_then_resume_is_exact(tmp_path):
    kw = dict(teacher_epochs=2, student_epochs=2, save_every=1, schemes="radi_l:list_loss=stlistnet")
    straight = T.run(tiny(tmp_path / "a", **kw))
    cfg = _write(str(tmp_path / "k.json"), {**TINY, **kw, "out_dir": str(tmp_path / "k"), "threads": 1})
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}

    def killed(*argv):
        done = subprocess.run([sys.executable, "-c", DRIVER, *argv, "--config", cfg], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == -signal.SIGKILL, done.stdout[-2000:] + done.stderr[-2000:]
        return done

    killed("write", "6")  # the 6th save: the individual stage's second (the end of its first epoch)
    assert os.path.exists(ck(tmp_path / "k", "individual", ".tmp"))
    killed("rotate", "4", "--resume")  # the 4th save that replaces one: between its two renames
    missing = [s for s in ("teacher", "individual", "student-radi_l_list_loss=stlistnet")
               if not os.path.exists(ck(tmp_path / "k", s)) and os.path.exists(ck(tmp_path / "k", s, ".prev"))]
    assert len(missing) == 1, os.listdir(tmp_path / "k" / "checkpoints")
    resumed = T.run(config_from_dict({**json.load(open(cfg)), "resume": True}))
    key = "radi_l:list_loss=stlistnet"
    assert resumed["schemes"][key]["test"] == straight["schemes"][key]["test"]
    assert [h["train_loss"] for h in resumed["schemes"][key]["history"]] == \
        [h["train_loss"] for h in straight["schemes"][key]["history"]]
    for stage in ("teacher", "individual", "student-radi_l_list_loss=stlistnet"):
        x, y = (torch.load(ck(d, stage), weights_only=True)["model"] for d in (tmp_path / "a", tmp_path / "k"))
        assert all(torch.equal(x[k], y[k]) for k in x), stage
