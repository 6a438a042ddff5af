"""Checkpoint files of the trainer: atomic writes, the full RNG state of a process, and the
settings ("fingerprint") a stage's checkpoint must agree with on ``--resume``.

A crash leaves the old checkpoint or the new one, never a torn file; with the RNG states (and
the epoch order of :class:`~radi_fast.data.EpochSampler`) a resumed stage continues exactly
where it stopped. What a checkpoint holds is listed in docs/training.md, "Configuration,
checkpoints, resume".
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import asdict

import numpy as np
import torch

from .config import Config
from .schemes import Scheme


def checkpoint_path(out_dir: str, stage: str) -> str:
    """``<out_dir>/checkpoints/<stage>.pt``, every run of characters other than ``A-Za-z0-9_.=-`` a ``_``."""
    return os.path.join(out_dir, "checkpoints", re.sub(r"[^A-Za-z0-9_.=-]+", "_", stage) + ".pt")


def save_checkpoint(path: str, state: dict) -> None:
    """Write to ``path.tmp`` then ``os.replace``: a crash leaves the old checkpoint or the new one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """The dict saved at ``path``, tensors on the CPU; raises ``ValueError`` naming the file when
    it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); "
                         "delete it or drop --resume") from None


def stage_fingerprint(cfg: Config) -> dict:
    """What a stage-1 checkpoint must agree with on ``--resume``: the data, synthetic, model and
    optim settings (but ``student_epochs``), the seed and the precision."""
    fp = {f"{s}.{k}": v for s in ("data", "synthetic", "model", "optim") for k, v in asdict(getattr(cfg, s)).items()}
    fp.update({"run.seed": cfg.run.seed, "run.precision": cfg.run.precision})
    fp.pop("optim.student_epochs")
    return fp


def student_fingerprint(cfg: Config, base: dict, spec: str, scheme: Scheme) -> dict:
    """What a student's checkpoint must agree with: ``base`` plus its initialisation, epochs and scheme."""
    return {**base, "run.student_init": cfg.run.student_init, "optim.student_epochs": cfg.optim.student_epochs,
            "scheme.spec": spec, **{f"scheme.{k}": v for k, v in asdict(scheme.cfg).items()}}


def fingerprint_diff(saved: dict, wanted: dict) -> list:
    """The sorted keys on which two settings fingerprints differ (a key missing on one side differs)."""
    return sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))


def seed_everything(seed: int) -> None:
    """Seed the global Python, numpy (``seed mod 2**32``) and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(loss_gen: torch.Generator) -> dict:
    """This process's RNG states: torch, numpy, Python, CUDA (None without CUDA) and ``loss_gen``."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loss": loss_gen.get_state()}


def set_rng_state(state: dict, loss_gen: torch.Generator) -> None:
    """Restore what :func:`rng_state` returned (the CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    loss_gen.set_state(state["loss"])
