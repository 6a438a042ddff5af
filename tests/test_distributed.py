"""torchrun / DDP: 2 CPU processes (gloo, loopback only) against 1 process, and exact resume.

The runs use the default synthetic benchmark at toy size. The first test launches the real
command line, ``torchrun --nproc_per_node 2 -m radi_fast.train``; the resume test forks its two
ranks from this process (``torch.multiprocessing.start_processes``) with the environment torchrun
would give them, so they skip importing torch again (a torchrun launch costs ~15 CPU-seconds of
imports here, the training itself well under one). Everything binds to 127.0.0.1
(``MASTER_ADDR``, and ``GLOO_SOCKET_IFNAME=lo`` keeps gloo's data connections on loopback too).
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from radi_fast import distributed as D
from radi_fast import train as T
from radi_fast.config import config_from_dict
from radi_fast.data import EpochSampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"n_train": 64, "n_val": 48, "n_test": 48, "n_answers": 120, "d_model": 16, "n_layers": 2, "n_heads": 2,
        "teacher_epochs": 2, "student_epochs": 2, "mc_samples": 3, "hot": 10, "cold": 5, "top_k": 20,
        "progress": False, "threads": 1, "curves": False}
# keep gloo's connections on the loopback device (Linux names it lo); elsewhere gloo's default
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo"} if os.path.exists("/sys/class/net/lo") else {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path, out_dir, nproc=2, **settings) -> subprocess.Popen:
    """Start ``torchrun --nproc_per_node nproc -m radi_fast.train --config <settings>``.

    Returns the running process (:func:`finish` waits for it): a launch spends most of its time
    importing torch in one process at a time, so two launches side by side take little longer
    than one.
    """
    cfg = tmp_path / f"{os.path.basename(out_dir)}.json"
    cfg.write_text(json.dumps({**TINY, "out_dir": str(out_dir), **settings}))
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", **LOOPBACK}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "radi_fast.train", "--config", str(cfg)]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rank_main(local_rank: int, world: int, port: int, argv: list, expect: int) -> None:
    os.environ.update({"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       **LOOPBACK})
    code = T.main(argv)
    if code != expect:
        raise RuntimeError(f"rank {local_rank}: radi_fast.train exited with {code}, expected {expect}")


def forked_run(tmp_path, out_dir, nproc=2, expect=0, **settings) -> None:
    """``radi_fast.train`` in ``nproc`` ranks forked from this process, as torchrun would start
    them (its environment variables), on the same code path; raises if a rank fails."""
    import torch._dynamo  # noqa: F401  (DDP imports it: import it once here, the forks inherit it)
    cfg = tmp_path / f"{os.path.basename(out_dir)}.json"
    cfg.write_text(json.dumps({**TINY, "out_dir": str(out_dir), **settings}))
    ctx = mp.start_processes(_rank_main, args=(nproc, _free_port(), ["--config", str(cfg)], expect),
                             nprocs=nproc, join=False, start_method="fork")
    deadline = time.time() + 150
    try:
        while not ctx.join(timeout=1):
            assert time.time() < deadline, "distributed run timed out"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def finish(proc: subprocess.Popen, ok: bool = True) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if ok:
        assert done.returncode == 0, out[-3000:] + err[-3000:]
    return done


def _weights(out_dir, stage):
    return torch.load(os.path.join(out_dir, "checkpoints", f"{stage}.pt"), weights_only=True)["model"]


# ------------------------------------------------------------------ (a) 2 processes = 1 process, same global batch
def test_two_processes_match_one_process_with_the_global_batch(tmp_path):
    """2 ranks with batch 8 each train like 1 process with batch 16: same metrics, same weights
    up to float32 rounding.

    What makes the runs equal: (1) the same global batches. ``EpochSampler`` (DistributedSampler's
    sharding) draws one permutation per (seed, epoch), independent of the world size, and rank r
    takes its positions r, r + 2, ...; rank r's batch i is therefore the odd or even half of
    positions 16i..16i+15, so the union of the two ranks' batch i is the single process's batch i
    (64 = 4 x 16 training samples: no padding, no ragged last batch). (2) The same step: every
    loss here is a mean over samples, and DDP averages the two ranks' gradients, so a step uses
    the gradient of the mean over the 16 samples; clipping and AdamW then see the same gradient.
    (3) No randomness that depends on the rank: dropout 0 (so MC dropout is deterministic too)
    and schemes without sampling (baseline, KD, CTKD, RADI-P with OT margins). The evaluation is
    an exact strided split of val/test summed over the ranks, so it scores each sample once.

    Tolerance, and why it is not zero: the two runs add the same float32 numbers in another order
    (two means of 8 then their average vs. one mean of 16; batched matmuls of 8 vs 16 rows), a
    relative 1e-7 per step, which AdamW's normalised update carries into the weights (measured
    ~1e-4 after 24 steps, weights are O(0.1..1)). Hence: weights to 2e-3, training losses to
    1e-5 relative, and the evaluation metrics (percent) to 0.01 points, far below one sample's
    weight (100/48 = 2.1 points) -- a changed top-5 decision for any sample would fail the test.
    """
    common = dict(dropout=0.0, schemes="baseline,kd,ctkd,radi_p")
    two = torchrun(tmp_path, tmp_path / "two", batch_size=8, **common)
    single = T.run(config_from_dict({**TINY, **common, "batch_size": 16, "out_dir": str(tmp_path / "one")}))
    done = finish(two)
    # rank 0 alone prints the table (stdout) and logs (stderr)
    assert done.stdout.count("| scheme |") == 1 and done.stderr.count("[teacher] epoch 1/2") == 1
    double = json.loads((tmp_path / "two" / "results.json").read_text())
    assert double["world_size"] == 2
    for part in ("stages", "schemes"):
        assert set(double[part]) == set(single[part])
        for name, r1 in single[part].items():
            r2 = double[part][name]
            for m, v in r1["test"].items():
                assert r2["test"][m] == pytest.approx(v, abs=0.01), (name, m)
            for h1, h2 in zip(r1["history"], r2["history"], strict=True):
                assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5), name
                for m, v in h1["val"].items():
                    assert h2["val"][m] == pytest.approx(v, abs=0.01), (name, m)
    for stage in ("teacher", "individual", "student-baseline", "student-kd", "student-ctkd", "student-radi_p"):
        a, b = _weights(tmp_path / "one", stage), _weights(tmp_path / "two", stage)
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=2e-3, rtol=0, msg=f"{stage}.{k}")


# ------------------------------------------------------------------ (b) killed + resumed = uninterrupted
def test_halted_then_resumed_two_process_run_is_exact(tmp_path):
    """A 2-process run stopped mid-epoch (``--halt_after_steps``: checkpoint, then every rank exits
    with code 3, as a preempted job) and relaunched with ``--resume`` ends with bit-identical
    weights to an uninterrupted 2-process run.

    It has every kind of per-rank randomness: dropout 0.1 and MC dropout (the global RNG, seeded
    seed + rank and saved per rank in the checkpoint), STListNet noise and RADI-L's cold-list
    sampler, RADI-P's random margins (the loss generator, re-seeded each step from
    (seed, rank, epoch, step)). 4 steps per epoch: the teacher is steps 1-8, the RADI-L student
    9-16; the halt after step 14 falls in the student's second epoch, after its second batch.
    """
    common = dict(batch_size=8, student_init="teacher",
                  schemes="radi_l:list_loss=stlistnet,radi_p:margin_mode=random")
    forked_run(tmp_path, tmp_path / "straight", **common)
    forked_run(tmp_path, tmp_path / "halted", halt_after_steps=14, expect=3, **common)
    partial = json.loads((tmp_path / "halted" / "results.json").read_text())  # written after every stage
    assert partial["finished"] is False and list(partial["stages"]) == ["teacher"] and not partial["schemes"]
    ck = torch.load(tmp_path / "halted" / "checkpoints" / "student-radi_l_list_loss=stlistnet.pt", weights_only=True)
    assert (ck["epoch"], ck["batch"], ck["world_size"], len(ck["rng"])) == (1, 2, 2, 2)
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # each rank its own stream
    # one process may reuse the finished teacher, but not continue a stage that 2 processes began
    with pytest.raises(ValueError, match="written by 2 process"):
        T.run(config_from_dict({**TINY, **common, "resume": True, "out_dir": str(tmp_path / "halted")}))
    forked_run(tmp_path, tmp_path / "halted", resume=True, **common)

    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    resumed = json.loads((tmp_path / "halted" / "results.json").read_text())
    for stage in ("teacher", "student-radi_l_list_loss=stlistnet", "student-radi_p_margin_mode=random"):
        a, b = _weights(tmp_path / "straight", stage), _weights(tmp_path / "halted", stage)
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    for name, r in straight["schemes"].items():
        assert resumed["schemes"][name]["test"] == r["test"], name
        # the halted run's mean loss was summed in another order across the halt: float64 rounding
        assert [h["train_loss"] for h in resumed["schemes"][name]["history"]] == \
            pytest.approx([h["train_loss"] for h in r["history"]], rel=1e-12)


# ------------------------------------------------------------------ the pieces, in this process
def test_loss_seed_is_a_function_of_seed_rank_epoch_step():
    seeds = {D.loss_seed(s, r, e, t) for s in range(3) for r in range(4) for e in range(3) for t in range(50)}
    assert len(seeds) == 3 * 4 * 3 * 50  # no two (seed, rank, epoch, step) share a stream
    assert D.loss_seed(7, 1, 2, 3) == D.loss_seed(7, 1, 2, 3)
    assert all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize("n", [10, 11, 13])
def test_epoch_sampler_shards_like_distributed_sampler(n):
    """Same padding (repeat from the start) and strided sharding as torch's DistributedSampler,
    and the shards' union covers every sample."""
    for world in (1, 2, 3, 4):
        shards = []
        for r in range(world):
            ours = list(EpochSampler(n, shuffle=False, rank=r, world_size=world))
            assert ours == list(DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False))
            shards += ours
        assert set(shards) == set(range(n))


def test_single_process_is_not_distributed(monkeypatch):
    for v in D.TORCHRUN_VARS:
        monkeypatch.delenv(v, raising=False)
    assert not D.launched() and not D.is_initialized()
    assert (D.rank(), D.world_size(), D.is_main()) == (0, 1, True)
    t = torch.ones(3)
    assert D.all_reduce_sum(t) is t and D.all_gather_object(5) == [5] and D.mean_over_ranks(0.1) == 0.1
    D.barrier()
    assert D.init("cpu") == torch.device("cpu") and not D.is_initialized()
    model, p = torch.nn.Linear(2, 2), torch.nn.Parameter(torch.ones(1))
    p.grad = torch.full((1,), 3.0)
    D.average_grads([p])
    assert D.wrap_model(model, torch.device("cpu")) is model and p.grad.item() == 3.0
    assert D.backend_for(torch.device("cpu")) == "gloo" and D.backend_for(torch.device("cuda", 0)) == "nccl"
