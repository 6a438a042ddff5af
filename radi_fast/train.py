"""The RADI trainer: ``python -m radi_fast.train`` runs the paper's two-stage pipeline end to end.

    python -m radi_fast.train                                   # synthetic benchmark, default schemes
    python -m radi_fast.train --schemes baseline,kd,dkd,radi_p,radi_p:margin_mode=uniform
    python -m radi_fast.train --dataset ivqa --data_dir data/iVQA --student_epochs 5
    python -m radi_fast.train --config my.json --resume          # flags override the file
    python -m radi_fast.train --help
    torchrun --standalone --nproc_per_node 4 -m radi_fast.train  # DDP, one process per GPU (docs/training.md)

Stage 1 trains a teacher with eq. 2 on the (insufficient) training labels. Stage 2 trains one
student per scheme with ``L_cls + alpha * L_rank`` (or the compared scheme's loss), each from the
same initialisation (``--student_init``: ``individual`` = a second model trained like the teacher
with another seed, the paper's default; ``teacher``; ``scratch``). After every epoch the model is
scored on the validation split, at the end on the test split (Acc@1, Hit@5, nDCG@5 against the
full answer sets), and a table comparing the schemes is printed and written to
``<out_dir>/results.json``. Checkpoints are written atomically after every epoch (and every
``--save_every`` steps); ``--resume`` continues every stage exactly where it stopped.

Under ``torchrun`` every process runs this same pipeline on its shard of each global batch
(``--batch_size`` is per process) with DistributedDataParallel (:mod:`radi_fast.distributed`);
rank 0 alone logs, shows progress bars and writes files.

The file reads top to bottom: one training stage (start, resume, one epoch of steps, end of
epoch, checkpoint, halt), the pipeline, the command line. The settings are in
:mod:`radi_fast.config`, the files in :mod:`radi_fast.checkpoint`, the scoring in
:mod:`radi_fast.evaluation`; docs/training.md explains the whole.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed as D
from .checkpoint import (checkpoint_path, fingerprint_diff, load_checkpoint, rng_state, save_checkpoint,
                         seed_everything, set_rng_state, stage_fingerprint, student_fingerprint)
from .config import Config, check_config, parse_args, resolve_auto, scheme_specs
from .data import EpochSampler, VideoQAData, make_loader
from .evaluation import autocast, evaluate, fmt_metrics, results_table
from .frozenbilm import load_frozenbilm
from .model import RadiModel, build_model
from .schemes import Scheme, build_scheme
from .synthetic import make_synthetic


class Halted(Exception):
    """Raised after ``--halt_after_steps`` training steps, once the checkpoint is written."""


def log(msg: str) -> None:
    """Print ``msg`` on rank 0 (through tqdm, so that a progress bar stays whole)."""
    if D.is_main():
        tqdm.write(msg)


@dataclass
class RunContext:
    """What the stages of one run share in this process."""

    cfg: Config
    device: torch.device
    steps: int = 0  # training steps this process has taken, all stages together (--halt_after_steps)

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

    def result(self) -> dict:
        """``{"history": [...], "val": metrics of the last epoch}`` (what :func:`train_stage` returns)."""
        return {"history": self.history, "val": self.history[-1]["val"] if self.history else {}}


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


def restore_stage(st: Stage) -> bool:
    """``--resume``: load the stage's checkpoint, if any, into ``st``; True when the stage had finished.

    Raises ``ValueError`` when only some ranks find the checkpoint, when it was written with
    other settings, or when an unfinished one was written by another number of processes.
    """
    found = os.path.isfile(st.path)
    if D.world_size() > 1:
        n_found = int(D.all_reduce_sum(torch.tensor([float(found)], dtype=torch.float64)).item())
        if 0 < n_found < D.world_size():
            raise ValueError(f"{st.path} exists for {n_found} of {D.world_size()} ranks: --resume needs --out_dir on "
                             "a file system that every node shares")
    if not found:
        return False
    ck = load_checkpoint(st.path)
    if ck.get("fingerprint") != st.fingerprint:
        diff = fingerprint_diff(ck.get("fingerprint", {}), st.fingerprint)
        raise ValueError(f"checkpoint {st.path} was written with other settings (differing: {diff}); "
                         "use another --out_dir or drop --resume")
    st.model.load_state_dict(ck["model"])
    st.scheme.load_state_dict(ck["scheme"])
    st.history = ck["history"]
    if ck["done"]:
        log(f"[{st.name}] finished in {st.path}: reusing it")
        return True
    if ck.get("world_size", 1) != D.world_size():
        raise ValueError(f"checkpoint {st.path} was written by {ck.get('world_size', 1)} process(es), this run has "
                         f"{D.world_size()}: the global batch and data shards differ; relaunch with as many "
                         "processes, or use another --out_dir")
    st.optimizer.load_state_dict(ck["optimizer"])
    st.scheduler.load_state_dict(ck["scheduler"])
    rngs = ck["rng"] if isinstance(ck["rng"], list) else [ck["rng"]]  # one state per rank
    set_rng_state(rngs[D.rank()], st.loss_gen)
    st.epoch, st.batch, st.loss_sum, st.n_loss = ck["epoch"], ck["batch"], ck["loss_sum"], ck["n_loss"]
    log(f"[{st.name}] resuming at epoch {st.epoch + 1}, batch {st.batch} from {st.path}")
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
               disable=not (run.progress and D.is_main()), initial=st.batch, total=st.steps_per_epoch)
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


# --------------------------------------------------------------------------------------------
# The pipeline: data -> teacher -> student initialisation -> one student per scheme -> table
# --------------------------------------------------------------------------------------------
def setup(cfg: Config) -> torch.device:
    """This process's device; sets the CPU threads and, under ``torchrun``, joins the process group."""
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    return D.init(cfg.run.device)


def load_data(cfg: Config) -> VideoQAData:
    """The synthetic benchmark or a FrozenBiLM dataset, as ``--dataset`` says."""
    d = cfg.data
    if d.dataset == "synthetic":
        return make_synthetic(dataclasses.replace(cfg.synthetic, num_frames=d.num_frames))
    return load_frozenbilm(d.dataset, d.data_dir or None, features=d.features or None, vocab=d.vocab or None,
                           train_csv=d.train_csv or None, val_csv=d.val_csv or None, test_csv=d.test_csv or None,
                           num_frames=d.num_frames, max_question_len=cfg.model.max_question_len,
                           train_labels=d.train_labels, cache_dir=d.cache_dir or None,
                           allow_missing_features=d.allow_missing_features)


def new_model(data: VideoQAData, cfg: Config, seed: int) -> RadiModel:
    """A freshly initialised model (torch seeded with ``seed``); replace it to train your own."""
    torch.manual_seed(seed)
    return build_model(data, dataclasses.replace(cfg.model, max_frames=cfg.data.num_frames))


def stage_result(ctx: RunContext, name: str, model: RadiModel, data: VideoQAData, out: dict, t0: float) -> dict:
    """A trained stage's entry in ``results.json``: its validation and test metrics, history and seconds."""
    test = evaluate(model, data.test, data.n_answers, ctx.cfg, ctx.device)
    log(f"[{name}] test {fmt_metrics(test)}")
    return {"val": out["val"], "test": test, "history": out["history"], "seconds": time.time() - t0}


# stage seeds: the teacher uses --seed, the individual initialisation and the students these
# offsets from it, so that runs with nearby --seed values never share a stage's seed
INDIVIDUAL_SEED, STUDENT_SEED = 1000, 2000


def run(cfg: Config) -> dict:
    """Run the whole pipeline; returns (and writes, on rank 0) the results dict.

    Raises ``ValueError`` / ``FileNotFoundError`` for bad settings or data files, :class:`Halted`
    after ``--halt_after_steps`` steps.
    """
    cfg = resolve_auto(cfg)
    check_config(cfg)
    ctx = RunContext(cfg, setup(cfg))
    t_start, cpu_start = time.time(), time.process_time()
    data = load_data(cfg)
    os.makedirs(cfg.run.out_dir, exist_ok=True)
    if D.is_main():
        with open(os.path.join(cfg.run.out_dir, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=2)
    world = D.world_size()
    log(f"data: {cfg.data.dataset}  train/val/test {len(data.train)}/{len(data.val)}/{len(data.test)}  "
        f"answers {data.n_answers}  device {ctx.device}  precision {cfg.run.precision}"
        + (f"  processes {world} (global batch {world * cfg.optim.batch_size})" if world > 1 else ""))
    base_fp = stage_fingerprint(cfg)
    results = {"config": asdict(cfg), "stages": {}, "schemes": {}}

    # stage 1: the teacher, trained with eq. 2 on the insufficient labels
    t0, teacher = time.time(), new_model(data, cfg, cfg.run.seed)
    out = train_stage(ctx, "teacher", teacher, data, build_scheme("baseline"), seed=cfg.run.seed,
                      epochs=cfg.optim.teacher_epochs, fingerprint=base_fp)
    results["stages"]["teacher"] = stage_result(ctx, "teacher", teacher, data, out, t0)
    teacher.eval().requires_grad_(False)

    # the student initialisation shared by every scheme
    init_state = None
    if cfg.run.student_init == "individual":
        t0, individual = time.time(), new_model(data, cfg, INDIVIDUAL_SEED + cfg.run.seed)
        out = train_stage(ctx, "individual", individual, data, build_scheme("baseline"),
                          seed=INDIVIDUAL_SEED + cfg.run.seed, epochs=cfg.optim.teacher_epochs, fingerprint=base_fp)
        results["stages"]["individual"] = stage_result(ctx, "individual", individual, data, out, t0)
        init_state = copy.deepcopy(individual.state_dict())
        del individual
    elif cfg.run.student_init == "teacher":
        init_state = copy.deepcopy(teacher.state_dict())

    # stage 2: one student per scheme, all from the same initialisation, data order and seed
    for spec in scheme_specs(cfg):
        scheme = build_scheme(spec, cfg.scheme)
        t0, student = time.time(), new_model(data, cfg, STUDENT_SEED + cfg.run.seed)
        if init_state is not None:
            student.load_state_dict(init_state)
        out = train_stage(ctx, f"student-{spec}", student, data, scheme, seed=STUDENT_SEED + cfg.run.seed,
                          epochs=cfg.optim.student_epochs, fingerprint=student_fingerprint(cfg, base_fp, spec, scheme),
                          teacher=teacher)
        results["schemes"][spec] = stage_result(ctx, f"student-{spec}", student, data, out, t0)
        del student

    results["wall_seconds"] = time.time() - t_start
    # CPU time of all threads of all processes (summed over the ranks)
    results["cpu_seconds"] = float(D.all_reduce_sum(torch.tensor([time.process_time() - cpu_start],
                                                                 dtype=torch.float64))[0])
    results["world_size"] = world
    if D.is_main():
        tmp = os.path.join(cfg.run.out_dir, "results.json.tmp")
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, os.path.join(cfg.run.out_dir, "results.json"))
    return results


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    """The command line; under ``torchrun`` every rank runs it and rank 0 alone prints the table.

    Returns the exit code: 0 done, 2 bad settings or data files (``error: ...`` on stderr),
    3 halted by ``--halt_after_steps``.
    """
    try:
        cfg = parse_args(argv)
        results = run(cfg)
        is_main = D.is_main()  # asked before cleanup() leaves the process group
    except Halted as e:
        if D.is_main():
            print(str(e), file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        D.cleanup()
    if not is_main:
        return 0
    deltas = "; deltas vs. baseline" if "baseline" in results["schemes"] else ""
    print(f"\ntest metrics (%) on the full answer sets{deltas}; "
          f"results in {os.path.join(cfg.run.out_dir, 'results.json')}\n")
    print(results_table(results))
    print(f"\nwall time {results['wall_seconds']:.0f}s (CPU time {results['cpu_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
