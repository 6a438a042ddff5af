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
(``--batch_size`` is per process) with DistributedDataParallel (:class:`DistributedRuntime`,
:mod:`radi_fast.distributed`); rank 0 alone logs, shows progress bars and writes files.

The file reads top to bottom: configuration, runtime (the rank-aware hooks), checkpoints,
evaluation, one training stage, the pipeline, the command line.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed as dist_utils
from . import metrics
from .data import EpochSampler, VideoQACollate, VideoQAData
from .frozenbilm import load_frozenbilm
from .model import ModelConfig, RadiModel, build_model
from .schemes import DEFAULT_SCHEMES, SchemeConfig, build_scheme
from .synthetic import SyntheticConfig, make_synthetic


# --------------------------------------------------------------------------------------------
# Configuration: dataclasses; every field is a command-line flag of the same name
# --------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Which dataset, and where its files are."""

    dataset: str = field(
        default="synthetic", metadata={"help": "synthetic | ivqa | msrvtt | msvd | activitynet | tgif"})
    data_dir: str = field(default="", metadata={"help": (
        "FrozenBiLM data folder (e.g. data/iVQA) with the CSVs, vocab.json, clipvitl14.pth")})
    features: str = field(default="", metadata={"help": (
        "features file (.pth dict, .npz, or .npy + .index.json); default <data_dir>/clipvitl14.pth")})
    vocab: str = field(default="", metadata={"help": "answer vocabulary; default <data_dir>/vocab.json"})
    train_csv: str = field(default="", metadata={"help": "default <data_dir>/train.csv (TGIF: train_frameqa.csv)"})
    val_csv: str = field(
        default="", metadata={"help": "default <data_dir>/val.csv (TGIF: test_frameqa.csv, as FrozenBiLM)"})
    test_csv: str = field(default="", metadata={"help": "default <data_dir>/test.csv (TGIF: test_frameqa.csv)"})
    num_frames: int = field(
        default=10, metadata={"help": "frames sampled uniformly per video (padded and masked when fewer)"})
    train_labels: str = field(
        default="top1", metadata={"help": "top1: keep only the most frequent training answer (sec. 4.3) | all"})
    cache_dir: str = field(
        default="", metadata={"help": "where the memory-mapped copy of the features goes (default: beside them)"})
    allow_missing_features: bool = field(
        default=False, metadata={"help": "use zero features for videos missing from the features file"})


@dataclass
class OptimConfig:
    """Optimiser, schedule, batches and epochs of every stage."""

    lr: float = field(default=0.0, metadata={"help": (
        "AdamW learning rate; 0 = auto: the paper's 5e-5 on real data, 2e-3 on the synthetic benchmark (a small "
        "model trained from scratch)")})
    weight_decay: float = field(default=0.0, metadata={"help": (
        "AdamW weight decay of the model's parameters (a scheme's own parameters get none)")})
    warmup_frac: float = field(
        default=0.1, metadata={"help": "linear warmup over this fraction of a stage's steps, then linear decay to 0"})
    grad_clip: float = field(default=0.1, metadata={"help": "max gradient norm (the paper's 0.1)"})
    batch_size: int = field(default=64, metadata={"help": (
        "training batch per process (under torchrun the global batch is this times the processes)")})
    eval_batch_size: int = field(default=256, metadata={"help": "evaluation batch per process"})
    teacher_epochs: int = field(default=10, metadata={"help": 'stage 1 (and the "individual" student initialisation)'})
    student_epochs: int = field(default=6, metadata={"help": "stage 2, per scheme"})


@dataclass
class RunConfig:
    """The run itself: schemes, seeds, precision, device, files, resume and halting."""

    schemes: str = field(default=",".join(DEFAULT_SCHEMES), metadata={"help": (
        "comma-separated specs, e.g. baseline,kd,radi_p:margin_mode=uniform")})
    student_init: str = field(default="individual", metadata={"help": (
        "individual (trained like the teacher, another seed) | teacher | scratch")})
    seed: int = field(
        default=0, metadata={"help": "teacher seed; the individual init uses seed+1000, every student seed+2000"})
    precision: str = field(default="fp32", metadata={"help": "fp32 | bf16 (autocast; losses are computed in fp32)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    out_dir: str = field(default="runs/radi", metadata={"help": "checkpoints/, results.json and config.json go here"})
    resume: bool = field(
        default=False, metadata={"help": "continue from the checkpoints in out_dir (finished stages are reused)"})
    save_every: int = field(
        default=0, metadata={"help": "also checkpoint every N steps inside an epoch (0: only after each epoch)"})
    halt_after_steps: int = field(default=0, metadata={"help": (
        "stop after N training steps in this process, checkpointed (for preemptible jobs)")})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers"})
    threads: int = field(default=1, metadata={"help": (
        "torch intra-op threads on CPU (the default model is too small to gain from more)")})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bars"})


@dataclass
class Config:
    """Every setting of a run, by section; each field of a section is a flag of the same name."""

    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheme: SchemeConfig = field(default_factory=SchemeConfig)
    run: RunConfig = field(default_factory=RunConfig)


# fields derived from others, not flags: the frame count follows --num_frames
NOT_FLAGS = {"synthetic": {"num_frames"}, "model": {"max_frames"}}
# run settings that may change between a run and its --resume
RESUMABLE = {"resume", "halt_after_steps", "num_workers", "threads", "progress", "out_dir", "device", "schemes",
             "save_every"}


def flag_fields() -> Iterator[Tuple[str, dataclasses.Field]]:
    """``(section name, field)`` of every flag, in the order of ``--help``."""
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory):
            if f.name not in NOT_FLAGS.get(section.name, ()):
                yield section.name, f


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``--config`` and one flag per setting, every flag defaulting to None (= not given)."""
    p = argparse.ArgumentParser(prog="python -m radi_fast.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="", help="JSON file of settings (flat, or by section: data, synthetic, "
                                                 "model, optim, scheme, run); flags given here override it")
    defaults = Config()
    groups = {}
    for section, f in flag_fields():
        g = groups.setdefault(section, p.add_argument_group(section))
        default = getattr(getattr(defaults, section), f.name)
        help_text = f"{f.metadata['help']} (default: {default})"
        if isinstance(default, bool):
            g.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            g.add_argument(f"--{f.name}", type=type(default), default=None, help=help_text)
    return p


def config_from_dict(d: dict, base: Optional[Config] = None, source: str = "config") -> Config:
    """Apply a flat or sectioned dict of settings to ``base`` (default: the defaults)."""
    cfg = copy.deepcopy(base or Config())
    where = {f.name: s for s, f in flag_fields()}
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in {s.name for s in dataclasses.fields(Config)}:
            flat.update(v)
        else:
            flat[k] = v
    for k, v in flat.items():
        if k not in where:
            raise ValueError(f"{source}: unknown setting {k!r}")
        section = getattr(cfg, where[k])
        want = type(getattr(section, k))
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise ValueError(f"{source}: setting {k!r} must be {want.__name__}, got {v!r}")
        setattr(section, k, v)
    return cfg


def parse_args(argv: Optional[List[str]] = None) -> Config:
    args = build_parser().parse_args(argv)
    cfg = Config()
    if args.config:
        if not os.path.isfile(args.config):
            raise FileNotFoundError(f"config file not found: {args.config}")
        try:
            with open(args.config) as f:
                cfg = config_from_dict(json.load(f), cfg, source=args.config)
        except json.JSONDecodeError as e:
            raise ValueError(f"{args.config}: not valid JSON ({e})") from None
    given = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    return config_from_dict(given, cfg, source="command line")


def resolve_auto(cfg: Config) -> Config:
    """Fill the settings whose default depends on the data (``0`` = auto); returns a copy.

    Real data gets the paper's values (lr 5e-5, RADI-P top-k 2500). The synthetic benchmark trains
    a small model from scratch, where 5e-5 would need hundreds of epochs, so it uses lr 2e-3; and
    it keeps RADI-P to the teacher's top 100 of its 1,000 answers, which holds every answer the
    teacher ranks near a correct one while costing ~(2500/100)^2 less per step on a CPU.
    """
    cfg = copy.deepcopy(cfg)
    synthetic = cfg.data.dataset == "synthetic"
    if not cfg.optim.lr:
        cfg.optim.lr = 2e-3 if synthetic else 5e-5
    if not cfg.scheme.top_k:
        cfg.scheme.top_k = 100 if synthetic else 2500
    return cfg


def check_config(cfg: Config) -> None:
    r, o = cfg.run, cfg.optim
    if r.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {r.precision!r}")
    if r.student_init not in ("individual", "teacher", "scratch"):
        raise ValueError(f"student_init must be individual, teacher or scratch, got {r.student_init!r}")
    if o.batch_size < 1 or o.teacher_epochs < 1 or o.student_epochs < 1:
        raise ValueError("batch_size, teacher_epochs and student_epochs must be >= 1")
    if not 0 <= o.warmup_frac < 1:
        raise ValueError(f"warmup_frac must be in [0, 1), got {o.warmup_frac}")
    for spec in scheme_specs(cfg):
        build_scheme(spec, cfg.scheme)  # raises on an unknown scheme or a bad override


def scheme_specs(cfg: Config) -> List[str]:
    specs = [s.strip() for s in cfg.run.schemes.split(",") if s.strip()]
    if not specs:
        raise ValueError("--schemes is empty")
    if len(set(specs)) != len(specs):
        raise ValueError(f"--schemes lists a scheme twice: {cfg.run.schemes}")
    return specs


# --------------------------------------------------------------------------------------------
# Runtime: where rank-awareness lives (one process; DistributedRuntime under torchrun)
# --------------------------------------------------------------------------------------------
class Halted(Exception):
    """Raised after ``--halt_after_steps`` steps, once the checkpoint is written."""


@dataclass
class Runtime:
    """Process-level facts and hooks. A distributed runtime overrides ``all_reduce_sum``,
    ``barrier`` and ``wrap_model`` and sets rank / world_size; only rank 0 logs, shows progress
    bars and writes checkpoints and results."""

    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1
    steps_this_run: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def barrier(self) -> None:
        pass

    def wrap_model(self, model: RadiModel) -> torch.nn.Module:
        """The module the optimizer steps through (DDP wraps it here)."""
        return model

    def train_sampler(self, n: int, seed: int):
        """The training sampler; it must have ``set_epoch`` (``set_start`` enables mid-epoch resume)."""
        return EpochSampler(n, seed=seed, rank=self.rank, world_size=self.world_size)

    def all_gather_object(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` (used for the per-rank RNG states of checkpoints)."""
        return [obj]

    def average_grads(self, params) -> None:
        """Average the gradients of parameters outside the DDP module (CTKD's temperature)."""

    def close(self) -> None:
        pass


class DistributedRuntime(Runtime):
    """One process of a ``torchrun`` job (:mod:`radi_fast.distributed` does the process group).

    The student (and the teacher while it trains) is wrapped in DistributedDataParallel, which
    averages the gradients over the ranks: with a per-rank batch ``b`` a step is a step on the
    global batch of ``b * world_size`` samples, the union of the ranks' shards. The frozen teacher
    is not wrapped: its logits and MC-dropout passes are computed locally on each rank's batch.
    """

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return dist_utils.all_reduce_sum(t)

    def barrier(self) -> None:
        dist_utils.barrier()

    def wrap_model(self, model: RadiModel) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def all_gather_object(self, obj) -> list:
        return dist_utils.all_gather_object(obj)

    def average_grads(self, params) -> None:
        for p in params:
            if p.grad is not None:
                p.grad.copy_(dist_utils.all_reduce_sum(p.grad) / self.world_size)

    def close(self) -> None:
        dist_utils.cleanup()


def make_runtime(cfg: Config) -> Runtime:
    """A :class:`DistributedRuntime` under ``torchrun`` (it joins the process group: ``nccl`` on
    GPUs, ``gloo`` on the CPU), else a single-process :class:`Runtime`."""
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    if dist_utils.launched():
        dev = dist_utils.init(cfg.run.device)
        return DistributedRuntime(device=dev, rank=dist_utils.rank(), world_size=dist_utils.world_size())
    dev = cfg.run.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    return Runtime(device=torch.device(dev))


def autocast(cfg: Config, rt: Runtime):
    return torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=cfg.run.precision == "bf16")


# --------------------------------------------------------------------------------------------
# Checkpoints: atomic writes, full RNG state
# --------------------------------------------------------------------------------------------
def save_checkpoint(path: str, state: dict) -> None:
    """Write to ``path.tmp`` then ``os.replace``: a crash leaves the old checkpoint or the new one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); delete it or drop --resume") from None


def rng_state(loss_gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loss": loss_gen.get_state()}


def set_rng_state(state: dict, loss_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    loss_gen.set_state(state["loss"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Evaluation: Acc@1 / Hit@5 / nDCG@5 against the full answer sets
# --------------------------------------------------------------------------------------------
METRICS = ("acc1", "hit5", "ndcg5")
METRIC_NAMES = {"acc1": "Acc@1", "hit5": "Hit@5", "ndcg5": "nDCG@5", "ivqa_acc": "iVQA acc"}


def make_loader(cfg: Config, dataset, n_answers: int, *, sampler, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=VideoQACollate(n_answers),
                      num_workers=cfg.run.num_workers, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def evaluate(model: RadiModel, dataset, n_answers: int, cfg: Config, rt: Runtime) -> Dict[str, float]:
    """Metrics in percent over the split; every sample counted once across ranks."""
    was_training = model.training
    model.eval()
    loader = make_loader(cfg, dataset, n_answers, sampler=list(range(rt.rank, len(dataset), rt.world_size)),
                         batch_size=cfg.optim.eval_batch_size)
    sums = torch.zeros(5, dtype=torch.float64)  # acc1, hit5, ndcg5, ivqa_acc, rows
    for batch in loader:
        batch = {k: v.to(rt.device, non_blocking=True) for k, v in batch.items()}
        with autocast(cfg, rt):
            scores = model(batch)
        scores, counts = scores.float().cpu(), batch["answer_counts"].cpu()
        sums[4] += scores.shape[0]
        ok = (counts > 0).any(dim=1)  # a row whose answers are all out of vocabulary counts as wrong
        if ok.any():
            s, c = scores[ok], counts[ok]
            sums[:4] += torch.stack([metrics.acc_at_1(s, c > 0, reduction="none").sum(),
                                     metrics.hit_at_k(s, c > 0, k=5, reduction="none").sum(),
                                     metrics.ndcg_at_k(s, c > 0, k=5, reduction="none").sum(),
                                     metrics.ivqa_accuracy(s, c, reduction="none").sum()]).double()
    sums = rt.all_reduce_sum(sums.to(rt.device)).cpu()
    model.train(was_training)
    names = METRICS + ("ivqa_acc",)
    return {m: 100.0 * float(sums[i] / max(float(sums[4]), 1.0)) for i, m in enumerate(names)}


def fmt_metrics(m: Dict[str, float]) -> str:
    return "  ".join(f"{METRIC_NAMES[k]} {m[k]:5.2f}" for k in METRICS)


# --------------------------------------------------------------------------------------------
# One training stage: the teacher, the individual initialisation, or one scheme's student
# --------------------------------------------------------------------------------------------
def linear_warmup_decay(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def train_stage(stage: str, model: RadiModel, data: VideoQAData, scheme, cfg: Config, rt: Runtime, *,
                seed: int, epochs: int, fingerprint: dict, teacher: Optional[RadiModel] = None) -> dict:
    """Train ``model`` in place with ``scheme``; returns ``{"history": [...], "val": {...}}``.

    Checkpoint ``<out_dir>/checkpoints/<stage>.pt`` after every epoch (and every ``save_every``
    steps). With ``--resume`` a finished stage is loaded and skipped, an unfinished one continues
    from its last checkpoint with the same optimizer, schedule, RNG and data order.

    Randomness: each rank seeds its global RNGs (dropout, MC dropout) with ``seed + rank``, and
    the generator passed to the loss (RADI-L's sampler, RADI-P's random margins, STListNet) is
    re-seeded before every step with ``distributed.loss_seed(seed, rank, epoch, step)``. Under
    torchrun every rank reads the same checkpoint, which holds every rank's RNG states.
    """
    o = cfg.optim
    path = os.path.join(cfg.run.out_dir, "checkpoints", re.sub(r"[^A-Za-z0-9_.=-]+", "_", stage) + ".pt")
    model.to(rt.device).train()
    scheme.to(rt.device)
    net = rt.wrap_model(model)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "weight_decay": o.weight_decay},
                                   {"params": scheme.parameters(), "weight_decay": 0.0}], lr=o.lr)
    sampler = rt.train_sampler(len(data.train), seed)
    loader = make_loader(cfg, data.train, data.n_answers, sampler=sampler, batch_size=o.batch_size)
    steps_per_epoch = len(loader)
    total = steps_per_epoch * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(total, int(o.warmup_frac * total)))
    loss_gen = torch.Generator()  # re-seeded every step with dist_utils.loss_seed(seed, rank, epoch, step)
    seed_everything(seed + rt.rank)
    epoch, batch_in_epoch, history, loss_sum, n_loss = 0, 0, [], 0.0, 0

    found = cfg.run.resume and os.path.isfile(path)
    if rt.world_size > 1 and cfg.run.resume:
        n_found = int(rt.all_reduce_sum(torch.tensor([float(found)], dtype=torch.float64)).item())
        if 0 < n_found < rt.world_size:
            raise ValueError(f"{path} exists for {n_found} of {rt.world_size} ranks: --resume needs --out_dir on a "
                             "file system that every node shares")
    if found:
        ck = load_checkpoint(path)
        if ck.get("fingerprint") != fingerprint:
            old = ck.get("fingerprint", {})
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise ValueError(f"checkpoint {path} was written with other settings (differing: {diff}); "
                             "use another --out_dir or drop --resume")
        model.load_state_dict(ck["model"])
        scheme.load_state_dict(ck["scheme"])
        history = ck["history"]
        if ck["done"]:
            rt.log(f"[{stage}] finished in {path}: reusing it")
            return {"history": history, "val": history[-1]["val"] if history else {}}
        if ck.get("world_size", 1) != rt.world_size:
            raise ValueError(f"checkpoint {path} was written by {ck.get('world_size', 1)} process(es), this run has "
                             f"{rt.world_size}: the global batch and data shards differ; relaunch with as many "
                             "processes, or use another --out_dir")
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        rngs = ck["rng"] if isinstance(ck["rng"], list) else [ck["rng"]]  # one state per rank
        set_rng_state(rngs[rt.rank], loss_gen)
        epoch, batch_in_epoch, loss_sum, n_loss = ck["epoch"], ck["batch"], ck["loss_sum"], ck["n_loss"]
        rt.log(f"[{stage}] resuming at epoch {epoch + 1}, batch {batch_in_epoch} from {path}")

    def checkpoint(done: bool = False) -> None:
        # collectives first (every rank): every rank's RNG states, and the running loss sum made
        # the mean over ranks on every rank (so a resumed rank continues from the shared value)
        nonlocal loss_sum
        rngs = rt.all_gather_object(rng_state(loss_gen))
        loss_sum = float(rt.all_reduce_sum(torch.tensor([loss_sum], dtype=torch.float64))[0]) / rt.world_size
        if rt.is_main:
            save_checkpoint(path, {
                "stage": stage, "fingerprint": fingerprint, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scheme": scheme.state_dict(), "rng": rngs, "world_size": rt.world_size, "epoch": epoch,
                "batch": batch_in_epoch, "loss_sum": loss_sum, "n_loss": n_loss, "history": history, "done": done})
        rt.barrier()  # the other ranks wait until the checkpoint is on disk

    if teacher is not None:
        teacher.to(rt.device).eval()
    while epoch < epochs:
        scheme.start_epoch(epoch, epochs)
        sampler.set_epoch(epoch)
        if batch_in_epoch:
            if not hasattr(sampler, "set_start"):
                raise ValueError(f"{type(sampler).__name__} cannot resume mid-epoch (it has no set_start)")
            sampler.set_start(batch_in_epoch * o.batch_size)
        elif hasattr(sampler, "set_start"):
            sampler.set_start(0)
        t0 = time.time()
        if not batch_in_epoch:
            loss_sum, n_loss = 0.0, 0
        bar = tqdm(loader, desc=f"{stage} {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True,
                   disable=not (cfg.run.progress and rt.is_main), initial=batch_in_epoch, total=steps_per_epoch)
        for batch in bar:
            batch = {k: v.to(rt.device, non_blocking=True) for k, v in batch.items()}
            t_logits = t_mc = None
            if scheme.needs_teacher:
                with torch.no_grad(), autocast(cfg, rt):
                    t_logits, t_mc = teacher.teacher_outputs(batch, scheme.mc_samples)
            with autocast(cfg, rt):
                logits = net(batch)
            loss_gen.manual_seed(dist_utils.loss_seed(seed, rt.rank, epoch, batch_in_epoch))
            loss, parts = scheme.loss(logits, batch["targets"], t_logits, t_mc if scheme.mc_samples else None,
                                      loss_gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"[{stage}] non-finite loss {loss.item()} at epoch {epoch + 1}, "
                                         f"batch {batch_in_epoch}; parts: { {k: float(v) for k, v in parts.items()} }")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under DDP: gradients averaged over the ranks
            rt.average_grads(scheme.parameters())
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
            scheduler.step()
            batch_in_epoch += 1
            rt.steps_this_run += 1
            loss_sum, n_loss = loss_sum + float(loss.detach()), n_loss + 1
            if batch_in_epoch % 10 == 0 or batch_in_epoch == steps_per_epoch:
                bar.set_postfix(loss=f"{loss_sum / n_loss:.4f}", **{k: f"{float(v):.3g}" for k, v in parts.items()},
                                lr=f"{scheduler.get_last_lr()[0]:.2e}")
            halt = cfg.run.halt_after_steps and rt.steps_this_run >= cfg.run.halt_after_steps
            if batch_in_epoch < steps_per_epoch and (halt or (cfg.run.save_every
                                                              and batch_in_epoch % cfg.run.save_every == 0)):
                checkpoint()
                if halt:
                    bar.close()
                    raise Halted(f"[{stage}] halted after {rt.steps_this_run} steps; rerun with --resume")
        bar.close()
        val = evaluate(model, data.val, data.n_answers, cfg, rt)
        # the mean over ranks of each rank's mean batch loss (= the mean global-batch loss)
        loss_sum = float(rt.all_reduce_sum(torch.tensor([loss_sum], dtype=torch.float64))[0]) / rt.world_size
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(n_loss, 1), "val": val,
                        "seconds": time.time() - t0})
        rt.log(f"[{stage}] epoch {epoch + 1}/{epochs}  loss {loss_sum / max(n_loss, 1):.4f}  val {fmt_metrics(val)}"
               f"  ({time.time() - t0:.1f}s)")
        epoch, batch_in_epoch = epoch + 1, 0
        checkpoint(done=epoch == epochs)
        if cfg.run.halt_after_steps and rt.steps_this_run >= cfg.run.halt_after_steps and epoch < epochs:
            raise Halted(f"[{stage}] halted after {rt.steps_this_run} steps; rerun with --resume")
    return {"history": history, "val": history[-1]["val"] if history else {}}


# --------------------------------------------------------------------------------------------
# The pipeline: data -> teacher -> student initialisation -> one student per scheme -> table
# --------------------------------------------------------------------------------------------
def load_data(cfg: Config) -> VideoQAData:
    d = cfg.data
    if d.dataset == "synthetic":
        return make_synthetic(dataclasses.replace(cfg.synthetic, num_frames=d.num_frames))
    return load_frozenbilm(d.dataset, d.data_dir or None, features=d.features or None, vocab=d.vocab or None,
                           train_csv=d.train_csv or None, val_csv=d.val_csv or None, test_csv=d.test_csv or None,
                           num_frames=d.num_frames, max_question_len=cfg.model.max_question_len,
                           train_labels=d.train_labels, cache_dir=d.cache_dir or None,
                           allow_missing_features=d.allow_missing_features)


def new_model(data: VideoQAData, cfg: Config, seed: int) -> RadiModel:
    torch.manual_seed(seed)
    return build_model(data, dataclasses.replace(cfg.model, max_frames=cfg.data.num_frames))


# stage seeds: the teacher uses --seed, the individual initialisation and the students these
# offsets from it, so that runs with nearby --seed values never share a stage's seed
INDIVIDUAL_SEED, STUDENT_SEED = 1000, 2000


def run(cfg: Config, rt: Optional[Runtime] = None) -> dict:
    """Run the whole pipeline; returns (and writes, on rank 0) the results dict."""
    cfg = resolve_auto(cfg)
    check_config(cfg)
    rt = rt or make_runtime(cfg)
    t_start, cpu_start = time.time(), time.process_time()
    data = load_data(cfg)
    os.makedirs(cfg.run.out_dir, exist_ok=True)
    if rt.is_main:
        with open(os.path.join(cfg.run.out_dir, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=2)
    rt.log(f"data: {cfg.data.dataset}  train/val/test {len(data.train)}/{len(data.val)}/{len(data.test)}  "
           f"answers {data.n_answers}  device {rt.device}  precision {cfg.run.precision}"
           + (f"  processes {rt.world_size} (global batch {rt.world_size * cfg.optim.batch_size})"
              if rt.world_size > 1 else ""))
    # what a stage's checkpoint must agree with on --resume
    base_fp = {f"{s}.{k}": v for s in ("data", "synthetic", "model", "optim") for k, v in asdict(getattr(cfg, s)).items()}
    base_fp.update({"run.seed": cfg.run.seed, "run.precision": cfg.run.precision})
    base_fp.pop("optim.student_epochs")
    results = {"config": asdict(cfg), "stages": {}, "schemes": {}}

    def stage_result(name, model, out, t0):
        test = evaluate(model, data.test, data.n_answers, cfg, rt)
        rt.log(f"[{name}] test {fmt_metrics(test)}")
        return {"val": out["val"], "test": test, "history": out["history"], "seconds": time.time() - t0}

    # stage 1: the teacher, trained with eq. 2 on the insufficient labels
    t0, teacher = time.time(), new_model(data, cfg, cfg.run.seed)
    out = train_stage("teacher", teacher, data, build_scheme("baseline"), cfg, rt, seed=cfg.run.seed,
                      epochs=cfg.optim.teacher_epochs, fingerprint=base_fp)
    results["stages"]["teacher"] = stage_result("teacher", teacher, out, t0)
    teacher.eval().requires_grad_(False)

    # the student initialisation shared by every scheme
    init_state = None
    if cfg.run.student_init == "individual":
        t0, individual = time.time(), new_model(data, cfg, INDIVIDUAL_SEED + cfg.run.seed)
        out = train_stage("individual", individual, data, build_scheme("baseline"), cfg, rt,
                          seed=INDIVIDUAL_SEED + cfg.run.seed,
                          epochs=cfg.optim.teacher_epochs, fingerprint=base_fp)
        results["stages"]["individual"] = stage_result("individual", individual, out, t0)
        init_state = copy.deepcopy(individual.state_dict())
        del individual
    elif cfg.run.student_init == "teacher":
        init_state = copy.deepcopy(teacher.state_dict())

    # stage 2: one student per scheme, all from the same initialisation, data order and seed
    for spec in scheme_specs(cfg):
        scheme = build_scheme(spec, cfg.scheme)
        fp = {**base_fp, "run.student_init": cfg.run.student_init, "optim.student_epochs": cfg.optim.student_epochs,
              "scheme.spec": spec, **{f"scheme.{k}": v for k, v in asdict(scheme.cfg).items()}}
        t0, student = time.time(), new_model(data, cfg, STUDENT_SEED + cfg.run.seed)
        if init_state is not None:
            student.load_state_dict(init_state)
        out = train_stage(f"student-{spec}", student, data, scheme, cfg, rt, seed=STUDENT_SEED + cfg.run.seed,
                          epochs=cfg.optim.student_epochs, fingerprint=fp, teacher=teacher)
        results["schemes"][spec] = stage_result(f"student-{spec}", student, out, t0)
        del student

    results["wall_seconds"] = time.time() - t_start
    # CPU time of all threads of all processes (summed over the ranks)
    results["cpu_seconds"] = float(rt.all_reduce_sum(torch.tensor([time.process_time() - cpu_start],
                                                                  dtype=torch.float64))[0])
    results["world_size"] = rt.world_size
    if rt.is_main:
        tmp = os.path.join(cfg.run.out_dir, "results.json.tmp")
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, os.path.join(cfg.run.out_dir, "results.json"))
    return results


def results_table(results: dict) -> str:
    """A Markdown table of the test metrics: reference rows, then the schemes with deltas vs. baseline."""
    head = "| scheme | " + " | ".join(METRIC_NAMES[m] for m in METRICS) + " | time (s) |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for name, r in results["stages"].items():
        lines.append(f"| {name} (stage 1) | " + " | ".join(f"{r['test'][m]:.2f}" for m in METRICS)
                     + f" | {r['seconds']:.0f} |")
    base = results["schemes"].get("baseline")
    for name, r in results["schemes"].items():
        cells = []
        for m in METRICS:
            v = r["test"][m]
            cells.append(f"{v:.2f}" if base is None or name == "baseline" else f"{v:.2f} ({v - base['test'][m]:+.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    """The command line; under ``torchrun`` every rank runs it and rank 0 alone prints the table."""
    rt = None
    try:
        cfg = parse_args(argv)
        rt = make_runtime(cfg)
        results = run(cfg, rt)
    except Halted as e:
        if rt is None or rt.is_main:
            print(str(e), file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if rt is not None:
            rt.close()
    if not rt.is_main:
        return 0
    deltas = "; deltas vs. baseline" if "baseline" in results["schemes"] else ""
    print(f"\ntest metrics (%) on the full answer sets{deltas}; "
          f"results in {os.path.join(cfg.run.out_dir, 'results.json')}\n")
    print(results_table(results))
    print(f"\nwall time {results['wall_seconds']:.0f}s (CPU time {results['cpu_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
