"""One training stage of the RADI trainer: start (or resume) it, run its epochs of steps, score
each epoch, checkpoint, halt. :func:`train_stage` reads top to bottom; the pipeline that runs the
stages is :mod:`radi_fast.train`, the explanations are in docs/training.md.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed as D
from .checkpoint import (CheckpointError, checkpoint_path, find_checkpoint, fingerprint_diff, quarantine, rng_state,
                         save_checkpoint, seed_everything, set_rng_state)
from .config import Config
from .data import EpochSampler, VideoQAData, make_loader
from .evaluation import autocast, evaluate, fmt_metrics
from .model import RadiModel
from .rundir import LOGGER
from .schemes import Scheme

class Halted(Exception):
    """Raised after ``--halt_after_steps`` training steps, once the checkpoint is written."""


def log(msg: str) -> None:
    """Log ``msg`` on rank 0: the console (through tqdm, so that a progress bar stays whole) and
    ``<out_dir>/train.log`` (:class:`radi_fast.rundir.RunLog`)."""
    if D.is_main():
        LOGGER.info(msg)


def warn(msg: str) -> None:
    """Log a warning on rank 0 (``warning: ...`` on the console)."""
    if D.is_main():
        LOGGER.warning(msg)


@dataclass
class RunContext:
    """What the stages of one run share in this process."""

    cfg: Config
    device: torch.device
    steps: int = 0  # training steps this process has taken, all stages together (--halt_after_steps)
    previous: Optional[dict] = None  # --resume: the run's earlier results.json (rank 0)

    @property
    def progress(self) -> bool:
        """Progress bars: ``--progress`` / ``--no-progress``, else only when stderr is a terminal."""
        p = self.cfg.run.progress
        return bool(p) if p is not None else sys.stderr.isatty()

    @property
    def halting(self) -> bool:
        """True once ``--halt_after_steps`` steps are done."""
        return bool(self.cfg.run.halt_after_steps) and self.steps >= self.cfg.run.halt_after_steps


# --------------------------------------------------------------------------------------------
# One training stage: the teacher, the individual initialisation, or one scheme's student
# --------------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One training stage in progress: what it trains, with what, and how far it is."""

    name: str
    path: str                      # its checkpoint
    model: RadiModel
    net: torch.nn.Module           # what the forward pass goes through: the model, in DDP under torchrun
    scheme: Scheme
    teacher: Optional[RadiModel]   # frozen, for the schemes that distil
    data: VideoQAData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: EpochSampler
    loader: DataLoader
    steps_per_epoch: int
    loss_gen: torch.Generator      # the losses' generator, re-seeded before every step (D.loss_seed)
    seed: int
    epochs: int
    fingerprint: dict              # the settings its checkpoint must agree with on --resume
    epoch: int = 0                 # epochs done
    batch: int = 0                 # batches of the current epoch done
    loss_sum: float = 0.0          # sum of the current epoch's batch losses, and how many
    n_loss: int = 0
    history: List[dict] = field(default_factory=list)  # per epoch: train_loss, val metrics, seconds
    reused: bool = False           # --resume found it finished

    def result(self) -> dict:
        """``{"history": [...], "val": metrics of the last epoch, "reused": bool}`` (what
        :func:`train_stage` returns)."""
        return {"history": self.history, "val": self.history[-1]["val"] if self.history else {},
                "reused": self.reused}


def linear_warmup_decay(total: int, warmup: int) -> Callable[[int], float]:
    """The learning-rate factor at a step: linear from 0 to 1 over ``warmup`` steps, then to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def start_stage(ctx: RunContext, name: str, model: RadiModel, data: VideoQAData, scheme: Scheme, *, seed: int,
                epochs: int, fingerprint: dict, teacher: Optional[RadiModel]) -> Stage:
    """Move ``model`` and ``scheme`` to the device, build the optimiser, schedule and data order,
    and seed this rank's global RNGs with ``seed + rank``."""
    o = ctx.cfg.optim
    path = checkpoint_path(ctx.cfg.run.out_dir, name)
    model.to(ctx.device).train()
    scheme.to(ctx.device)
    net = D.wrap_model(model, ctx.device)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "weight_decay": o.weight_decay},
                                   {"params": scheme.parameters(), "weight_decay": 0.0}], lr=o.lr)
    sampler = EpochSampler(len(data.train), seed=seed, rank=D.rank(), world_size=D.world_size())
    loader = make_loader(data.train, data.n_answers, sampler=sampler, batch_size=o.batch_size,
                         num_workers=ctx.cfg.run.num_workers)
    total = len(loader) * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(total, int(o.warmup_frac * total)))
    loss_gen = torch.Generator()
    seed_everything(seed + D.rank())
    return Stage(name, path, model, net, scheme, teacher, data, optimizer, scheduler, sampler, loader, len(loader),
                 loss_gen, seed, epochs, fingerprint)


def find_stage_checkpoint(st: Stage) -> Tuple[Optional[dict], Optional[str]]:
    """``--resume``: the newest good checkpoint of the stage (``<name>.pt``, else ``<name>.pt.prev``)
    and its file, or ``(None, None)`` when it has none.

    A damaged file (truncated, failing its checksum, of another stage) is reported naming it and
    never used: when the previous checkpoint is good the run resumes from it (the damaged file is
    moved to ``<name>.pt.corrupt``), otherwise it raises :class:`CheckpointError`. Every rank must
    find the same file (``ValueError`` otherwise: ``--out_dir`` must be shared).
    """
    ck, used, problems = find_checkpoint(st.path, st.name)
    if D.world_size() > 1:
        seen = D.all_gather_object(used and os.path.basename(used))
        if len(set(seen)) > 1:
            raise ValueError(f"the ranks found different checkpoints of stage {st.name} in {os.path.dirname(st.path)} "
                             f"({seen}): --resume needs --out_dir on a file system that every node shares")
    if ck is None:
        if problems:
            raise CheckpointError(problems[0].path, problems[0].problem + (
                "; " + "; ".join(str(e) for e in problems[1:]) if problems[1:] else "") +
                f"; no earlier good checkpoint of stage {st.name}: move the damaged file(s) away to train the stage "
                "again, or use another --out_dir")
        return None, None
    if problems:
        D.barrier()  # every rank has read what it needs before rank 0 moves the damaged file away
        if D.is_main():
            for e in problems:
                warn(f"[{st.name}] {e}")
                warn(f"[{st.name}] moved {e.path} to {quarantine(e.path)}: it is never reused")
        log(f"[{st.name}] resuming from the previous checkpoint {used}")
        D.barrier()
    elif used != st.path:
        log(f"[{st.name}] {st.path} is missing (the run stopped while replacing it): resuming from {used}")
    return ck, used


def restore_stage(st: Stage) -> bool:
    """``--resume``: load the stage's checkpoint, if any, into ``st``; True when the stage had finished.

    Raises ``ValueError`` when the ranks find different checkpoints, when the checkpoint is damaged
    with no good previous one (:class:`CheckpointError`), when it was written with other settings,
    or when an unfinished one was written by another number of processes.
    """
    ck, used = find_stage_checkpoint(st)
    if ck is None:
        return False
    if ck.get("fingerprint") != st.fingerprint:
        diff = fingerprint_diff(ck.get("fingerprint", {}), st.fingerprint)
        raise ValueError(f"checkpoint {used} was written with other settings (differing: {diff}); "
                         "use another --out_dir or drop --resume")
    st.model.load_state_dict(ck["model"])
    st.scheme.load_state_dict(ck["scheme"])
    st.history = ck["history"]
    if ck["done"]:
        log(f"[{st.name}] finished in {used}: reusing it")
        st.reused = True
        return True
    if ck.get("world_size", 1) != D.world_size():
        raise ValueError(f"checkpoint {used} was written by {ck.get('world_size', 1)} process(es), this run has "
                         f"{D.world_size()}: the global batch and data shards differ; relaunch with as many "
                         "processes, or use another --out_dir")
    st.optimizer.load_state_dict(ck["optimizer"])
    st.scheduler.load_state_dict(ck["scheduler"])
    rngs = ck["rng"] if isinstance(ck["rng"], list) else [ck["rng"]]  # one state per rank
    set_rng_state(rngs[D.rank()], st.loss_gen)
    st.epoch, st.batch, st.loss_sum, st.n_loss = ck["epoch"], ck["batch"], ck["loss_sum"], ck["n_loss"]
    log(f"[{st.name}] resuming at epoch {st.epoch + 1}, batch {st.batch} from {used}")
    return False


def train_step(ctx: RunContext, st: Stage, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, dict]:
    """One optimisation step on one batch; returns ``(loss, {part: value})``.

    The teacher's outputs (when the scheme needs them), the student's logits, the scheme's loss
    with the generator seeded from ``(seed, rank, epoch, step)``, backward (gradients averaged
    over the ranks), clipping, AdamW and the schedule. Raises ``FloatingPointError`` on a
    non-finite loss.
    """
    cfg, device, scheme = ctx.cfg, ctx.device, st.scheme
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    t_logits = t_mc = None
    if scheme.needs_teacher:
        with torch.no_grad(), autocast(cfg, device):
            t_logits, t_mc = st.teacher.teacher_outputs(batch, scheme.mc_samples)
    with autocast(cfg, device):
        logits = st.net(batch)
    st.loss_gen.manual_seed(D.loss_seed(st.seed, D.rank(), st.epoch, st.batch))
    loss, parts = scheme.loss(logits, batch["targets"], t_logits, t_mc if scheme.mc_samples else None, st.loss_gen)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"[{st.name}] non-finite loss {loss.item()} at epoch {st.epoch + 1}, "
                                 f"batch {st.batch}; parts: { {k: float(v) for k, v in parts.items()} }")
    st.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # under DDP: gradients averaged over the ranks
    D.average_grads(scheme.parameters())
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(st.model.parameters(), cfg.optim.grad_clip)
    st.optimizer.step()
    st.scheduler.step()
    return loss, parts


def train_epoch(ctx: RunContext, st: Stage) -> None:
    """Train on this rank's share of the current epoch, from batch ``st.batch`` on.

    Checkpoints every ``--save_every`` steps; raises :class:`Halted` (after a checkpoint) once
    ``--halt_after_steps`` steps are done inside the epoch.
    """
    run = ctx.cfg.run
    st.scheme.start_epoch(st.epoch, st.epochs)
    st.sampler.set_epoch(st.epoch)
    st.sampler.set_start(st.batch * ctx.cfg.optim.batch_size)
    if not st.batch:
        st.loss_sum, st.n_loss = 0.0, 0
    bar = tqdm(st.loader, desc=f"{st.name} {st.epoch + 1}/{st.epochs}", leave=False, dynamic_ncols=True,
               disable=not (ctx.progress and D.is_main()), initial=st.batch, total=st.steps_per_epoch)
    for batch in bar:
        loss, parts = train_step(ctx, st, batch)
        st.batch += 1
        ctx.steps += 1
        st.loss_sum, st.n_loss = st.loss_sum + float(loss.detach()), st.n_loss + 1
        if st.batch % 10 == 0 or st.batch == st.steps_per_epoch:
            bar.set_postfix(loss=f"{st.loss_sum / st.n_loss:.4f}", **{k: f"{float(v):.3g}" for k, v in parts.items()},
                            lr=f"{st.scheduler.get_last_lr()[0]:.2e}")
        if st.batch < st.steps_per_epoch and (ctx.halting or (run.save_every and st.batch % run.save_every == 0)):
            save_stage(st)
            if ctx.halting:
                bar.close()
                halt(ctx, st)
    bar.close()


def end_epoch(ctx: RunContext, st: Stage, t0: float) -> None:
    """Score the validation split, record and log the epoch (started at ``t0``), go to the next."""
    val = evaluate(st.model, st.data.val, st.data.n_answers, ctx.cfg, ctx.device)
    st.loss_sum = D.mean_over_ranks(st.loss_sum)  # so that train_loss is the mean global-batch loss
    train_loss = st.loss_sum / max(st.n_loss, 1)
    summary = st.scheme.epoch_summary()  # e.g. RADI-P's mean Sinkhorn iterations
    st.history.append({"epoch": st.epoch + 1, "train_loss": train_loss, "val": val, **summary,
                       "seconds": time.time() - t0})
    extra = "".join(f"  {k} {v:.3g}" for k, v in summary.items())
    log(f"[{st.name}] epoch {st.epoch + 1}/{st.epochs}  loss {train_loss:.4f}  val {fmt_metrics(val)}{extra}"
        f"  ({time.time() - t0:.1f}s)")
    st.epoch, st.batch = st.epoch + 1, 0


def save_stage(st: Stage, done: bool = False) -> None:
    """Checkpoint the stage; every rank calls it (rank 0 writes, the others wait at a barrier).

    First the collectives: every rank's RNG states are gathered, and the running loss sum
    becomes the mean over ranks on every rank (so that a resumed rank continues from it).
    """
    rngs = D.all_gather_object(rng_state(st.loss_gen))
    st.loss_sum = D.mean_over_ranks(st.loss_sum)
    if D.is_main():
        save_checkpoint(st.path, {
            "stage": st.name, "fingerprint": st.fingerprint, "model": st.model.state_dict(),
            "optimizer": st.optimizer.state_dict(), "scheduler": st.scheduler.state_dict(),
            "scheme": st.scheme.state_dict(), "rng": rngs, "world_size": D.world_size(), "epoch": st.epoch,
            "batch": st.batch, "loss_sum": st.loss_sum, "n_loss": st.n_loss, "history": st.history, "done": done})
    D.barrier()


def halt(ctx: RunContext, st: Stage) -> None:
    """Stop the run (the stage is checkpointed): raises :class:`Halted`."""
    raise Halted(f"[{st.name}] halted after {ctx.steps} steps; rerun with --resume")


def train_stage(ctx: RunContext, name: str, model: RadiModel, data: VideoQAData, scheme: Scheme, *, seed: int,
                epochs: int, fingerprint: dict, teacher: Optional[RadiModel] = None) -> dict:
    """Train ``model`` in place with ``scheme``; returns ``{"history": [...], "val": {...}}``.

    Checkpoints ``<out_dir>/checkpoints/<name>.pt`` after every epoch (and every ``--save_every``
    steps). With ``--resume`` a finished stage is loaded and skipped, an unfinished one continues
    from its last checkpoint with the same optimizer, schedule, RNG and data order. Raises
    :class:`Halted` after ``--halt_after_steps`` steps. How the randomness is seeded per rank and
    step: docs/training.md, "Distributed training".
    """
    st = start_stage(ctx, name, model, data, scheme, seed=seed, epochs=epochs, fingerprint=fingerprint,
                     teacher=teacher)
    if ctx.cfg.run.resume and restore_stage(st):
        return st.result()
    if teacher is not None:
        teacher.to(ctx.device).eval()
    while st.epoch < st.epochs:
        t0 = time.time()
        train_epoch(ctx, st)
        end_epoch(ctx, st, t0)
        save_stage(st, done=st.epoch == st.epochs)
        if ctx.halting and st.epoch < st.epochs:
            halt(ctx, st)
    return st.result()
