"""The trainer's settings: dataclasses, the command line and ``--config`` files, and their checks.

Every field of a section of :class:`Config` (:class:`DataConfig`, :class:`~radi_fast.synthetic.SyntheticConfig`,
:class:`~radi_fast.model.ModelConfig`, :class:`OptimConfig`, :class:`~radi_fast.schemes.SchemeConfig`,
:class:`RunConfig`) is a flag of the same name, its ``--help`` text the field's ``metadata["help"]``
and its allowed values the field's ``choices`` or range (:mod:`radi_fast._settings`);
``--config run.json`` reads the same names, flat or by section, and flags override the file.
:func:`check_config` validates a whole configuration, every stage and scheme included, before
the trainer does any work.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Tuple

from ._settings import allowed, check_fields
from ._version import __version__
from .frozenbilm import FROZENBILM_SPLITS
from .model import ModelConfig
from .plugins import load_factory
from .schemes import DEFAULT_SCHEMES, SchemeConfig, build_scheme
from .synthetic import SyntheticConfig, check_synthetic

DESCRIPTION = "The RADI trainer: ``python -m radi_fast.train`` runs the paper's two-stage pipeline end to end."
DATASETS = ("synthetic",) + tuple(FROZENBILM_SPLITS)
DEVICE_RULE = "auto, cpu, cuda or cuda:N"


def _device_problem(value: str) -> Optional[str]:
    """The rule of ``--device``: its form here; whether CUDA is there is checked by :func:`check_device`."""
    return None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) else f"must be {DEVICE_RULE}"


def _not_empty(value: str) -> Optional[str]:
    return None if value.strip() else "must not be empty"


@dataclass
class DataConfig:
    """Which dataset, and where its files are (or your own data's factory, ``data``)."""

    dataset: str = field(default="synthetic", metadata={
        "help": "the embedded synthetic benchmark, or a FrozenBiLM dataset (--data_dir)", "choices": DATASETS})
    data: str = field(default="", metadata={"help": (
        "your own data instead of --dataset: package.module:factory or path/to/file.py:factory, called as "
        "factory(cfg) -> a radi_fast.data.VideoQAData (docs/training.md, \"Plugging in your own model and data\")")})
    data_dir: str = field(default="", metadata={"help": (
        "FrozenBiLM data folder (e.g. data/iVQA) with the CSVs, vocab.json, clipvitl14.pth")})
    features: str = field(default="", metadata={"help": (
        "features file (.pth dict, .npz, or .npy + .index.json); default <data_dir>/clipvitl14.pth")})
    vocab: str = field(default="", metadata={"help": "answer vocabulary; default <data_dir>/vocab.json"})
    train_csv: str = field(default="", metadata={"help": "default <data_dir>/train.csv (TGIF: train_frameqa.csv)"})
    val_csv: str = field(
        default="", metadata={"help": "default <data_dir>/val.csv (TGIF: test_frameqa.csv, as FrozenBiLM)"})
    test_csv: str = field(default="", metadata={"help": "default <data_dir>/test.csv (TGIF: test_frameqa.csv)"})
    num_frames: int = field(default=10, metadata={
        "help": "frames sampled uniformly per video (padded and masked when fewer; the synthetic benchmark needs 6)",
        "min": 1})
    train_labels: str = field(default="top1", metadata={
        "help": ("top1: keep only the most frequent training answer (sec. 4.3); top2: the two most frequent; "
                 "all: every annotated answer"), "choices": ("top1", "top2", "all")})
    cache_dir: str = field(
        default="", metadata={"help": "where the memory-mapped copy of the features goes (default: beside them)"})
    allow_missing_features: bool = field(
        default=False, metadata={"help": "use zero features for videos missing from the features file"})


@dataclass
class OptimConfig:
    """Optimiser, schedule, batches and epochs of every stage."""

    lr: float = field(default=0.0, metadata={"help": (
        "AdamW learning rate; 0 = auto: the paper's 5e-5 on real data, 2e-3 on the synthetic benchmark (a small "
        "model trained from scratch)"), "min": 0})
    weight_decay: float = field(default=0.0, metadata={"help": (
        "AdamW weight decay of the model's parameters (a scheme's own parameters get none)"), "min": 0})
    warmup_frac: float = field(default=0.1, metadata={
        "help": "linear warmup over this fraction of a stage's steps, then linear decay to 0", "min": 0, "lt": 1})
    grad_clip: float = field(
        default=0.1, metadata={"help": "max gradient norm (the paper's 0.1); 0: no clipping", "min": 0})
    batch_size: int = field(default=64, metadata={"help": (
        "training batch per process (under torchrun the global batch is this times the processes)"), "min": 1})
    eval_batch_size: int = field(default=256, metadata={"help": "evaluation batch per process", "min": 1})
    teacher_epochs: int = field(
        default=10, metadata={"help": 'stage 1 (and the "individual" student initialisation)', "min": 1})
    student_epochs: int = field(default=6, metadata={"help": "stage 2, per scheme", "min": 1})
    individual_epochs: int = field(default=0, metadata={"help": (
        'the "individual" student initialisation alone (0: teacher_epochs), to vary the teacher with a fixed '
        "student initialisation"), "min": 0})


@dataclass
class RunConfig:
    """The run itself: schemes, seeds, precision, device, files, resume and halting, output."""

    schemes: str = field(default=",".join(DEFAULT_SCHEMES), metadata={"help": (
        "comma-separated specs name[:key=value...], e.g. baseline,kd,radi_p:margin_mode=uniform (docs/training.md)")})
    student_init: str = field(default="individual", metadata={"help": (
        "individual: trained like the teacher with another seed (the paper's); teacher: a copy of it; scratch"),
        "choices": ("individual", "teacher", "scratch")})
    seed: int = field(default=0, metadata={
        "help": "teacher seed; the individual init uses seed+1000, every student seed+2000", "min": 0})
    precision: str = field(default="fp32", metadata={
        "help": "bf16: autocast (the losses are computed in fp32)", "choices": ("fp32", "bf16")})
    device: str = field(default="auto", metadata={
        "help": "auto: cuda when available (under torchrun cuda:LOCAL_RANK), else cpu",
        "check": _device_problem, "rule": DEVICE_RULE})
    out_dir: str = field(default="runs/radi", metadata={
        "help": "the run's folder: config.json, results.json, train.log, curves.png, checkpoints/",
        "check": _not_empty, "rule": "a folder"})
    resume: bool = field(default=False, metadata={
        "help": "continue the run in out_dir (finished stages are reused; needs the same settings)"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace the run in a non-empty out_dir (deletes its checkpoints, results and logs)"})
    save_every: int = field(default=0, metadata={
        "help": "also checkpoint every N steps inside an epoch (0: only after each epoch)", "min": 0})
    halt_after_steps: int = field(default=0, metadata={"help": (
        "stop after N training steps in this process, checkpointed, exit code 3 (preemptible jobs); 0: never"),
        "min": 0})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers", "min": 0})
    threads: int = field(default=1, metadata={"help": (
        "torch intra-op threads on CPU (the default model is too small to gain from more); 0: torch's default"),
        "min": 0})
    progress: Optional[bool] = field(default=None, metadata={
        "help": "progress bars (default: only when stderr is a terminal; else one log line per epoch)",
        "type": bool})
    curves: bool = field(default=True, metadata={
        "help": "draw out_dir/curves.png (loss and validation metrics per epoch) after every stage"})


@dataclass
class Config:
    """Every setting of a run, by section; each field of a section is a flag of the same name."""

    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheme: SchemeConfig = field(default_factory=SchemeConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
# fields derived from others, not flags: the frame count follows --num_frames
NOT_FLAGS = {"synthetic": {"num_frames"}, "model": {"max_frames"}}
# run settings that may change between a run and its --resume (every other setting must agree)
RESUMABLE = {"resume", "overwrite", "halt_after_steps", "num_workers", "threads", "progress", "curves", "out_dir",
             "device", "schemes", "save_every"}


def flag_fields() -> Iterator[Tuple[str, dataclasses.Field]]:
    """``(section name, field)`` of every flag, in the order of ``--help``."""
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory):
            if f.name not in NOT_FLAGS.get(section.name, ()):
                yield section.name, f


def value_type(f: dataclasses.Field, default: Any) -> type:
    """The type of a setting's values: ``metadata["type"]`` (for a setting whose default is None,
    meaning auto), else the default's type."""
    return f.metadata.get("type", type(default))


def version_text() -> str:
    """What ``--version`` prints."""
    import torch
    return f"radi_fast {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


class _Parser(argparse.ArgumentParser):
    """argparse, with a short error (the flag, what it allows) instead of the whole usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n({self.prog} --help lists every flag and its allowed values)\n")


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The command line: ``--config``, ``--version`` and one flag per setting, every flag defaulting
    to None (= not given). Enum settings get argparse ``choices``; every help text ends with the
    default and the allowed values."""
    if prog is None:
        prog = "radi-fast-train" if os.path.basename(sys.argv[0] or "") == "radi-fast-train" \
            else "python -m radi_fast.train"
    p = _Parser(prog=prog, description=DESCRIPTION)
    p.add_argument("--version", action="version", version=version_text())
    p.add_argument("--config", default="", help="JSON file of settings (an object, flat or by section: data, "
                                                 "synthetic, model, optim, scheme, run); flags given here override it")
    defaults = Config()
    groups = {}
    for section, f in flag_fields():
        g = groups.setdefault(section, p.add_argument_group(section))
        default = getattr(getattr(defaults, section), f.name)
        rule = "" if "choices" in f.metadata else allowed(f.metadata)  # argparse lists the choices itself
        shown = [] if default in ("", None) else [f"default: {default}"]
        help_text = f.metadata["help"] + (f" ({'; '.join(shown + ([rule] if rule else []))})" if shown or rule else "")
        help_text = help_text.replace("%", "%%")
        kind = value_type(f, default)
        if kind is bool:
            g.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            g.add_argument(f"--{f.name}", type=kind, default=None, choices=f.metadata.get("choices"), help=help_text)
    return p


def config_from_dict(d: Any, base: Optional[Config] = None, source: str = "config") -> Config:
    """Apply a flat or sectioned dict of settings to a copy of ``base`` (default: the defaults).

    Raises ``ValueError`` (naming ``source``) when ``d`` is not a dict, for an unknown setting or a
    value of the wrong type; an int is accepted for a float setting, null for a setting whose
    default is null (auto). Values are not range-checked here: :func:`check_config` does it.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{source}: must hold a JSON object of settings (flat or by section), "
                         f"got {type(d).__name__ if not isinstance(d, list) else 'a list'}")
    cfg = copy.deepcopy(base or Config())
    defaults = Config()
    where = {f.name: (s, f) for s, f in flag_fields()}
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in SECTIONS:
            flat.update(v)
        else:
            flat[k] = v
    for k, v in flat.items():
        if k not in where:
            raise ValueError(f"{source}: unknown setting {k!r}")
        section_name, f = where[k]
        section = getattr(cfg, section_name)
        default = getattr(getattr(defaults, section_name), k)
        want = value_type(f, default)
        if v is None and default is None:
            setattr(section, k, v)
            continue
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise ValueError(f"{source}: setting {k!r} must be {want.__name__}, got {v!r}")
        setattr(section, k, v)
    return cfg


def read_config_file(path: str) -> dict:
    """The JSON object in ``path``; raises ``FileNotFoundError`` or ``ValueError`` naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read it ({e})") from None


def parse_args(argv: Optional[List[str]] = None) -> Config:
    """The settings of a command line (``sys.argv`` when None): defaults, then ``--config``, then flags.

    Raises ``FileNotFoundError`` for a missing ``--config`` file, ``ValueError`` for a file that is
    not a JSON object or a bad setting; ``--help``, ``--version`` and argparse's own errors (an
    unknown flag, a value of the wrong type, a choice not allowed) exit (``SystemExit``, code 2 for
    errors).
    """
    args = build_parser().parse_args(argv)
    cfg = Config()
    if args.config:
        cfg = config_from_dict(read_config_file(args.config), cfg, source=args.config)
    given = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    return config_from_dict(given, cfg, source="command line")


def real_data(cfg: Config) -> bool:
    """False for the embedded synthetic benchmark; True for FrozenBiLM data and for ``--data``."""
    return bool(cfg.data.data) or cfg.data.dataset != "synthetic"


def resolve_auto(cfg: Config) -> Config:
    """A copy of ``cfg`` with the data-dependent defaults (``0`` = auto) filled in.

    Real data (and ``--data``) gets the paper's values (lr 5e-5, RADI-P top-k 2500), the synthetic
    benchmark lr 2e-3 and top-k 100; why is in docs/training.md.
    """
    cfg = copy.deepcopy(cfg)
    if not cfg.optim.lr:
        cfg.optim.lr = 5e-5 if real_data(cfg) else 2e-3
    if not cfg.scheme.top_k:
        cfg.scheme.top_k = 2500 if real_data(cfg) else 100
    return cfg


def check_device(device: str) -> None:
    """Raise ``ValueError`` unless ``--device`` names a device this process has."""
    problem = _device_problem(device)
    if problem:
        raise ValueError(f"--device {problem}, got {device!r}")
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
                             "torch.cuda.is_available() is False); use --device cpu or auto")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def check_config(cfg: Config) -> None:
    """Raise ``ValueError`` naming the flag and its allowed values for any setting the trainer
    cannot run, before any work: every field against its rule (choices, range), the model's shape
    (``d_model`` divisible by ``n_heads``), the synthetic benchmark's settings, where real data
    comes from, every scheme spec (and its overrides), ``--resume`` with ``--overwrite``, the
    device, and the ``--model`` / ``--data`` plug-ins (imported here, not called)."""
    for section in SECTIONS:
        check_fields(getattr(cfg, section))
    m, d, r = cfg.model, cfg.data, cfg.run
    if m.d_model % m.n_heads:
        raise ValueError(f"--d_model ({m.d_model}) must be divisible by --n_heads ({m.n_heads})")
    if not d.data:
        if d.dataset == "synthetic":
            check_synthetic(dataclasses.replace(cfg.synthetic, num_frames=d.num_frames))
        elif not d.data_dir and not all((d.features, d.vocab, d.train_csv, d.val_csv, d.test_csv)):
            raise ValueError(f"--dataset {d.dataset} needs --data_dir, or every file: --features, --vocab, "
                             "--train_csv, --val_csv, --test_csv")
    for spec in scheme_specs(cfg):
        try:
            build_scheme(spec, cfg.scheme)  # raises on an unknown scheme, a bad override or value
        except ValueError as e:
            raise ValueError(f"--schemes: {e}") from None
    if r.resume and r.overwrite:
        raise ValueError("--resume continues the run in --out_dir, --overwrite replaces it: pass one of them")
    check_device(r.device)
    if d.data:
        load_factory(d.data, "--data")
    if m.model:
        load_factory(m.model, "--model")


def scheme_specs(cfg: Config) -> List[str]:
    """The specs of ``--schemes``, in order; raises ``ValueError`` when it is empty or repeats one."""
    specs = [s.strip() for s in cfg.run.schemes.split(",") if s.strip()]
    if not specs:
        raise ValueError("--schemes is empty")
    if len(set(specs)) != len(specs):
        raise ValueError(f"--schemes lists a scheme twice: {cfg.run.schemes}")
    return specs
