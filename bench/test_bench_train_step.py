"""Training-step overhead, the paper's Table 4 analogue: one optimisation step of the trainer's
built-in model (``radi_fast.model.VideoQATransformer``, default ``ModelConfig``) on the synthetic
benchmark, for the schemes baseline, KD, RADI-L and RADI-P with their default settings
(``radi_fast.schemes.SchemeConfig``: RADI-P T = 10 MC passes of the teacher's last layer,
top 2500, lam auto; RADI-L hot 100 / cold 10, Zipf, ListNet).

The step is the body of ``radi_fast.train.train_step``, reproduced here because that function
takes a whole training stage (scheduler, data order, checkpoint path): the frozen teacher's outputs (``teacher_outputs``: one
encode, T last-layer passes) when the scheme needs them, the student's forward, ``scheme.loss``,
``backward``, gradient clipping at 0.1 and an AdamW step. Batch 64 (the trainer's default),
N answers = the synthetic vocabulary size: 1000 (the trainer's default); on CUDA also 2500
(= RADI-P's top-k) and 4096.
The report gives each scheme's time and its overhead over KD.
"""
import dataclasses
import os

import pytest
import torch
from torch.utils.data import DataLoader

import providers as P
from radi_fast.data import VideoQACollate
from radi_fast.model import ModelConfig, build_model
from radi_fast.schemes import SchemeConfig, build_scheme
from radi_fast.synthetic import SyntheticConfig, make_synthetic

SCHEMES = ["baseline", "kd", "radi_l", "radi_p"]
BATCH = int(os.environ.get("RADI_BENCH_TRAIN_BATCH", 64))
N_ANSWERS = {"tiny": [200], "cpu": [1000], "full": [1000, 2500, 4096]}[P.sizes_mode()]
CASES = [(n, s) for n in N_ANSWERS for s in SCHEMES]


class _Step:
    def __init__(self, n_answers: int, scheme_name: str, dev: torch.device):
        syn = SyntheticConfig(n_train=4 * BATCH, n_val=16, n_test=16, n_answers=n_answers)
        data = make_synthetic(syn)
        cfg = dataclasses.replace(ModelConfig(), max_frames=syn.num_frames)
        torch.manual_seed(0)
        self.teacher = build_model(data, cfg).to(dev).eval().requires_grad_(False)
        torch.manual_seed(1)
        self.model = build_model(data, cfg).to(dev).train()
        self.scheme = build_scheme(scheme_name, SchemeConfig()).to(dev)
        self.opt = torch.optim.AdamW(list(self.model.parameters()) + self.scheme.parameters(), lr=1e-3)
        loader = DataLoader(data.train, batch_size=BATCH, shuffle=False, collate_fn=VideoQACollate(data.n_answers))
        self.batch = {k: v.to(dev) for k, v in next(iter(loader)).items()}
        self.gen = torch.Generator(device=dev).manual_seed(0)
        self.dev = dev

    def __call__(self):
        scheme, batch = self.scheme, self.batch
        t_logits = t_mc = None
        if scheme.needs_teacher:
            with torch.no_grad():
                t_logits, t_mc = self.teacher.teacher_outputs(batch, scheme.mc_samples)
        logits = self.model(batch)
        loss, _ = scheme.loss(logits, batch["targets"], t_logits, t_mc if scheme.mc_samples else None, self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.1)
        self.opt.step()
        P.sync(self.dev)
        return loss.detach()


def _build(inp: P.Inputs):
    return inp.tensors["step"]


@pytest.mark.parametrize("n_answers, scheme", CASES, ids=[f"B{BATCH}-N{n}-{s}" for n, s in CASES])
def test_train_step(bench_run, n_answers, scheme):
    dev = P.device()
    inp = P.cached_inputs(("train_step", n_answers, scheme),
                          lambda: P.Inputs("train_step", BATCH, n_answers, SchemeConfig().mc_samples, dev,
                                           {"step": _Step(n_answers, scheme, dev)},
                                           {"scheme": scheme, "batch": BATCH, "model": "VideoQATransformer default"}))
    provider = P.Provider(scheme, _build)
    bench_run("train_step", provider, inp, group=f"train step B={BATCH} N={n_answers}",
              extra={"scheme": scheme, "n_answers": n_answers}, key=("train_step", n_answers, scheme))
