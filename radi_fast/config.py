"""The trainer's settings: dataclasses, the command line and ``--config`` files.

Every field of a section of :class:`Config` (:class:`DataConfig`, :class:`~radi_fast.synthetic.SyntheticConfig`,
:class:`~radi_fast.model.ModelConfig`, :class:`OptimConfig`, :class:`~radi_fast.schemes.SchemeConfig`,
:class:`RunConfig`) is a flag of the same name, its ``--help`` text the field's ``metadata["help"]``;
``--config run.json`` reads the same names, flat or by section, and flags override the file.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

from .model import ModelConfig
from .schemes import DEFAULT_SCHEMES, SchemeConfig, build_scheme
from .synthetic import SyntheticConfig

DESCRIPTION = "The RADI trainer: ``python -m radi_fast.train`` runs the paper's two-stage pipeline end to end."


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
    p = argparse.ArgumentParser(prog="python -m radi_fast.train", description=DESCRIPTION)
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
    """Apply a flat or sectioned dict of settings to a copy of ``base`` (default: the defaults).

    Raises ``ValueError`` (naming ``source``) for an unknown setting or a value of the wrong type;
    an int is accepted for a float setting.
    """
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
    """The settings of a command line (``sys.argv`` when None): defaults, then ``--config``, then flags.

    Raises ``FileNotFoundError`` for a missing ``--config`` file, ``ValueError`` for a file that is
    not JSON or a bad setting; ``--help`` exits (``SystemExit``).
    """
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
    """A copy of ``cfg`` with the data-dependent defaults (``0`` = auto) filled in.

    Real data gets the paper's values (lr 5e-5, RADI-P top-k 2500), the synthetic benchmark lr 2e-3
    and top-k 100; why is in docs/training.md.
    """
    cfg = copy.deepcopy(cfg)
    synthetic = cfg.data.dataset == "synthetic"
    if not cfg.optim.lr:
        cfg.optim.lr = 2e-3 if synthetic else 5e-5
    if not cfg.scheme.top_k:
        cfg.scheme.top_k = 100 if synthetic else 2500
    return cfg


def check_config(cfg: Config) -> None:
    """Raise ``ValueError`` for settings the trainer cannot run: precision, student_init, sizes and
    epochs below 1, warmup_frac outside [0, 1), and a bad or repeated scheme spec."""
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
    """The specs of ``--schemes``, in order; raises ``ValueError`` when it is empty or repeats one."""
    specs = [s.strip() for s in cfg.run.schemes.split(",") if s.strip()]
    if not specs:
        raise ValueError("--schemes is empty")
    if len(set(specs)) != len(specs):
        raise ValueError(f"--schemes lists a scheme twice: {cfg.run.schemes}")
    return specs
