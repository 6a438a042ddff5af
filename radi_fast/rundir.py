"""The run's folder (``--out_dir``): what it holds, when a run may start in it, the log, and what
``results.json`` says about where its numbers came from.

``<out_dir>/`` holds ``config.json`` (the resolved settings), ``results.json`` (every number,
the per-epoch history, the environment), ``train.log``, ``curves.png`` and ``checkpoints/``.
A run is never lost: a non-empty folder is refused unless ``--resume`` (continue it: the
settings must agree with its ``config.json``) or ``--overwrite`` (replace it: its files are
deleted, nothing else); and all of that is decided before anything is written
(:func:`inspect_out_dir`). ``results.json`` accumulates over resumes (:func:`merge_results`).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import logging.handlers
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from typing import List, Optional, Tuple

import torch
from tqdm.auto import tqdm

from ._report import backend_info
from ._version import __version__
from .config import RESUMABLE, SECTIONS, Config

RUN_FILES = ("config.json", "results.json", "train.log", "curves.png")
CHECKPOINT_SUFFIXES = (".pt", ".pt.prev", ".pt.tmp", ".pt.corrupt")
LOGGER = logging.getLogger("radi_fast.train")


# ------------------------------------------------------------------------------------------ the folder
def _describe(entries: List[str]) -> str:
    ours = [e for e in entries if e in RUN_FILES or e == "checkpoints"]
    shown = ", ".join((ours or entries)[:5]) + (", ..." if len(ours or entries) > 5 else "")
    return f"a run ({shown})" if ours else f"other files ({shown})"


def read_json(path: str, what: str):
    """The JSON in ``path``; raises ``ValueError`` naming the file when it is not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} ({what}) cannot be read ({e}); fix or remove it, or use another --out_dir") from None


def config_diff(saved: dict, cfg: Config) -> List[str]:
    """``section.key: saved -> now`` for every setting outside ``RESUMABLE`` on which ``saved``
    (a ``config.json``) and ``cfg`` differ; a setting ``saved`` lacks (an older version's file)
    counts as its default."""
    now, defaults, out = asdict(cfg), asdict(Config()), []
    for section in SECTIONS:
        for key, value in now[section].items():
            if key in RESUMABLE:
                continue
            old = saved.get(section, {}).get(key, defaults[section][key])
            if old != value:
                out.append(f"{section}.{key}: {old!r} -> {value!r}")
    return out


def inspect_out_dir(cfg: Config) -> dict:
    """Decide, before anything is written, whether the run may start in ``--out_dir``.

    Returns ``{"results": the results.json to build on, or None; "config": the config.json found,
    or None}``. Raises ``ValueError`` when ``out_dir`` is a file or cannot be written, when it is
    not empty and neither ``--resume`` nor ``--overwrite`` is given, or (``--resume``) when its
    ``config.json`` holds other settings than this run's, or its JSON files cannot be read.
    """
    out, r = cfg.run.out_dir, cfg.run
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out_dir {out} is a file, not a folder")
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(os.path.abspath(parent))
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out_dir {out}: {parent} is not writable")
    entries = sorted(os.listdir(out)) if os.path.isdir(out) else []
    found = {"results": None, "config": None}
    if not entries:
        return found
    if not (r.resume or r.overwrite):
        raise ValueError(f"--out_dir {out} already holds {_describe(entries)}: pass --resume to continue that run, "
                         "--overwrite to replace it, or choose another --out_dir")
    if r.overwrite:
        return found
    path = os.path.join(out, "config.json")
    if os.path.isfile(path):
        saved = read_json(path, "the run's settings")
        if not isinstance(saved, dict):
            raise ValueError(f"{path} does not hold a run's settings; fix or remove it, or use another --out_dir")
        diff = config_diff(saved, cfg)
        if diff:
            raise ValueError(f"--resume: the run in {out} has other settings (differing: {'; '.join(diff)}); "
                             "resume with its settings (only " + ", ".join(sorted(RESUMABLE - {"resume", "overwrite"}))
                             + " may change), or use another --out_dir")
        found["config"] = saved
    path = os.path.join(out, "results.json")
    if os.path.isfile(path):
        found["results"] = read_json(path, "the run's results")
    return found


def clear_run(out_dir: str) -> Tuple[int, List[str]]:
    """``--overwrite``: delete the files a run writes in ``out_dir`` (config.json, results.json,
    train.log, curves.png, the checkpoints), nothing else; returns how many files were deleted and
    the entries left there."""
    removed = 0
    for name in RUN_FILES:
        for path in (os.path.join(out_dir, name), os.path.join(out_dir, name + ".tmp")):
            if os.path.isfile(path):
                os.remove(path)
                removed += 1
    ck = os.path.join(out_dir, "checkpoints")
    if os.path.isdir(ck):
        for name in os.listdir(ck):
            if name.endswith(CHECKPOINT_SUFFIXES) and os.path.isfile(os.path.join(ck, name)):
                os.remove(os.path.join(ck, name))
                removed += 1
        if not os.listdir(ck):
            os.rmdir(ck)
    return removed, sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON through ``path.tmp`` and ``os.replace``: never a torn file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def union_schemes(saved: Optional[dict], results: Optional[dict], specs: List[str]) -> str:
    """``--schemes`` of the whole run after a resume: the earlier run's schemes (config.json, then
    results.json), then this invocation's new ones, in order."""
    out = []
    if saved:
        out += [s.strip() for s in saved.get("run", {}).get("schemes", "").split(",") if s.strip()]
    if results:
        out += list(results.get("schemes", {}))
    out += specs
    return ",".join(dict.fromkeys(out))


def merge_results(previous: Optional[dict], current: dict) -> dict:
    """``current`` on top of ``previous`` (a resumed run's earlier results.json): the stages and
    schemes trained or reused now replace theirs, the others are kept (in their order)."""
    if not previous:
        return current
    merged = copy.deepcopy(current)
    for part in ("stages", "schemes"):
        merged[part] = {**previous.get(part, {}), **current.get(part, {})}
    return merged


# ------------------------------------------------------------------------------------------ provenance
def git_commit() -> Optional[dict]:
    """``{"commit": sha, "dirty": bool}`` of the checkout the package is imported from, or None
    (not a git checkout, or git missing)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if not dirty.returncode else None}
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    """The accelerator's name (``torch.cuda.get_device_name``), or the CPU's model (Linux's
    /proc/cpuinfo, else what ``platform`` knows) and how many cores this process may use."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name or platform.processor() or platform.machine() or 'CPU'} ({cores} cores)"


def environment(device: torch.device, world_size: int) -> dict:
    """What produced a results file: versions, ``backend_info()``, device, processes, git commit."""
    info = backend_info()
    return {"radi_fast": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "triton": info.get("triton"), "platform": platform.platform(), "device": str(device),
            "device_name": device_name(device), "world_size": world_size, "cpu_threads": torch.get_num_threads(),
            "backend_info": info, "git": git_commit(), "argv": list(sys.argv)}


# ------------------------------------------------------------------------------------------ the log
class _Console(logging.Handler):
    """Log records on stderr, through tqdm so that a progress bar stays whole."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class _ConsoleFormat(logging.Formatter):
    def format(self, record):
        msg = super().format(record)
        return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"


class RunLog:
    """The trainer's log (``logging.getLogger("radi_fast.train")``): on the console from the start,
    and in ``<out_dir>/train.log`` (appended to, with times) from :meth:`open_file` on, including
    what was logged before it. Only rank 0 logs (``enabled``)."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.file = enabled, None
        self.handlers: List[logging.Handler] = []
        if not enabled:
            return
        console = _Console()
        console.setFormatter(_ConsoleFormat("%(message)s"))
        self.buffer = logging.handlers.MemoryHandler(capacity=100000, flushLevel=logging.CRITICAL + 1)
        self._saved = (LOGGER.level, LOGGER.propagate)
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False
        for h in (console, self.buffer):
            LOGGER.addHandler(h)
            self.handlers.append(h)

    def open_file(self, path: str) -> None:
        if not self.enabled:
            return
        self.file = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.buffer.setTarget(self.file)
        self.buffer.flush()
        LOGGER.removeHandler(self.buffer)
        self.handlers.remove(self.buffer)
        self.buffer.close()
        LOGGER.addHandler(self.file)
        self.handlers.append(self.file)

    def to_file_only(self, level: int, msg: str) -> None:
        """Record ``msg`` in train.log alone (the console shows it another way, e.g. main's ``error:``)."""
        if self.file is not None:
            self.file.handle(LOGGER.makeRecord(LOGGER.name, level, __file__, 0, msg, (), None))

    def close(self) -> None:
        for h in self.handlers:
            LOGGER.removeHandler(h)
            h.close()
        self.handlers = []
        if self.enabled:
            LOGGER.setLevel(self._saved[0])
            LOGGER.propagate = self._saved[1]


def resolved_dict(cfg: Config, schemes: str) -> dict:
    """``asdict(cfg)`` with ``run.schemes`` set to the whole run's schemes (see :func:`union_schemes`)."""
    return asdict(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, schemes=schemes)))
