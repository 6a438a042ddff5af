"""One optimisation step of the trainer's built-in model for a scheme (the body of
``radi_fast.train.train_step``, reproduced because that function takes a whole training stage):
the frozen teacher's outputs when the scheme needs them, the student's forward, ``scheme.loss``,
backward, clipping at 0.1 and an AdamW step, then a device sync. Used by
bench/test_bench_train_step.py and bench/ab_timing.py.
"""
import dataclasses

import torch
from torch.utils.data import DataLoader

import providers as P
from radi_fast.data import VideoQACollate
from radi_fast.model import ModelConfig, build_model
from radi_fast.schemes import SchemeConfig, build_scheme
from radi_fast.synthetic import SyntheticConfig, make_synthetic


class TrainStep:
    """``TrainStep(n_answers, scheme, device, batch)()``: one step on a fixed synthetic batch."""

    def __init__(self, n_answers: int, scheme_name: str, dev: torch.device, batch: int = 64):
        syn = SyntheticConfig(n_train=4 * batch, n_val=16, n_test=16, n_answers=n_answers)
        data = make_synthetic(syn)
        cfg = dataclasses.replace(ModelConfig(), max_frames=syn.num_frames)
        torch.manual_seed(0)
        self.teacher = build_model(data, cfg).to(dev).eval().requires_grad_(False)
        torch.manual_seed(1)
        self.model = build_model(data, cfg).to(dev).train()
        self.scheme = build_scheme(scheme_name, SchemeConfig()).to(dev)
        self.opt = torch.optim.AdamW(list(self.model.parameters()) + self.scheme.parameters(), lr=1e-3)
        loader = DataLoader(data.train, batch_size=batch, shuffle=False, collate_fn=VideoQACollate(data.n_answers))
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
