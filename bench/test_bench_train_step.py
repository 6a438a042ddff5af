"""Training-step overhead, the paper's Table 4 analogue: one optimisation step of the trainer's
built-in model (``radi_fast.model.VideoQATransformer``, default ``ModelConfig``) on the synthetic
benchmark, for the schemes baseline, KD, RADI-L and RADI-P with their default settings
(``radi_fast.schemes.SchemeConfig``: RADI-P T = 10 MC passes of the teacher's last layer,
top 2500, lam auto; RADI-L hot 100 / cold 10, Zipf, ListNet).

The step (bench/train_step_case.py) is the body of ``radi_fast.train.train_step``, reproduced
because that function takes a whole training stage (scheduler, data order, checkpoint path): the
frozen teacher's outputs (``teacher_outputs``: one encode, T last-layer passes) when the scheme
needs them, the student's forward, ``scheme.loss``, ``backward``, gradient clipping at 0.1 and an
AdamW step. Batch 64 (the trainer's default),
N answers = the synthetic vocabulary size: 1000 (the trainer's default); on CUDA also 2500
(= RADI-P's top-k) and 4096.
The report gives each scheme's time and its overhead over KD.
"""
import os

import pytest
import providers as P
from radi_fast.schemes import SchemeConfig
from train_step_case import TrainStep

SCHEMES = ["baseline", "kd", "radi_l", "radi_p"]
BATCH = int(os.environ.get("RADI_BENCH_TRAIN_BATCH", 64))
N_ANSWERS = {"tiny": [200], "cpu": [1000], "full": [1000, 2500, 4096]}[P.sizes_mode()]
CASES = [(n, s) for n in N_ANSWERS for s in SCHEMES]


def _build(inp: P.Inputs):
    return inp.tensors["step"]


@pytest.mark.parametrize("n_answers, scheme", CASES, ids=[f"B{BATCH}-N{n}-{s}" for n, s in CASES])
def test_train_step(bench_run, n_answers, scheme):
    dev = P.device()
    inp = P.cached_inputs(("train_step", n_answers, scheme),
                          lambda: P.Inputs("train_step", BATCH, n_answers, SchemeConfig().mc_samples, dev,
                                           {"step": TrainStep(n_answers, scheme, dev, BATCH)},
                                           {"scheme": scheme, "batch": BATCH, "model": "VideoQATransformer default"}))
    provider = P.Provider(scheme, _build)
    bench_run("train_step", provider, inp, group=f"train step B={BATCH} N={n_answers}",
              extra={"scheme": scheme, "n_answers": n_answers}, key=("train_step", n_answers, scheme))
