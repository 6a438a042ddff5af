"""Checkpoint files of the trainer: safe loading, integrity, atomic writes that keep the previous
checkpoint, the full RNG state of a process, and the settings ("fingerprint") a stage's
checkpoint must agree with on ``--resume``.

* **Safe to load.** A checkpoint holds only dicts, lists, tuples, numbers, strings and tensors
  (the numpy RNG state is stored as a tensor), and is read with ``torch.load(weights_only=True)``:
  loading one never runs pickled code.
* **Verified.** Every checkpoint carries ``sha256``, a digest of everything else in it (the
  model, optimiser, RNG states, position, and the stage name and settings fingerprint it was
  written for), recomputed on load: a truncated, bit-flipped or otherwise altered file raises
  :class:`CheckpointError` naming the file, and a file of another stage (a copied
  ``individual.pt`` as ``teacher.pt``) is refused too. Nothing unverified is ever reused.
* **Never torn, never alone.** A write goes to ``<path>.tmp`` (flushed to disk), the current
  checkpoint becomes ``<path>.prev``, then the new one takes its place: a crash at any point leaves
  a whole checkpoint (the new one, or the previous one), and ``--resume`` falls back to
  ``<path>.prev`` when ``<path>`` is missing or damaged (:func:`find_checkpoint`).

With the RNG states (and the epoch order of :class:`~radi_fast.data.EpochSampler`) a resumed
stage continues exactly where it stopped. What a checkpoint holds is listed in
docs/training.md, "Configuration, checkpoints, resume".
"""
from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import asdict
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from .config import Config
from .schemes import Scheme

FORMAT = 2  # 1: pickled numpy RNG state, no checksum (before weights_only loading)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, damaged, or of another stage."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"checkpoint {path} {problem}")
        self.path, self.problem = path, problem


def checkpoint_path(out_dir: str, stage: str) -> str:
    """``<out_dir>/checkpoints/<stage>.pt``, every run of characters other than ``A-Za-z0-9_.=-`` a ``_``."""
    return os.path.join(out_dir, "checkpoints", re.sub(r"[^A-Za-z0-9_.=-]+", "_", stage) + ".pt")


def previous_path(path: str) -> str:
    """Where the checkpoint before the current one of a stage is kept."""
    return f"{path}.prev"


# ---------------------------------------------------------------------------------------- integrity
def _feed(h, x: Any) -> None:
    """Feed ``x`` to the hash ``h`` in a canonical form: type tags, lengths, and the raw bytes of
    every tensor (dtype and shape included), so that any change of any value changes the digest."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        t = (t.cpu() if t.device.type != "cpu" else t).contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(x, dict):
        h.update(f"D{len(x)};".encode())
        for k, v in x.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(x, (list, tuple)):
        h.update(f"{'L' if isinstance(x, list) else 'U'}{len(x)};".encode())
        for v in x:
            _feed(h, v)
    elif x is None or isinstance(x, bool):
        h.update(f"{x!r};".encode())
    elif isinstance(x, int):
        h.update(f"I{x};".encode())
    elif isinstance(x, float):
        h.update(f"F{x.hex()};".encode())
    elif isinstance(x, str):
        b = x.encode()
        h.update(f"S{len(b)};".encode() + b)
    elif isinstance(x, bytes):
        h.update(f"B{len(x)};".encode() + x)
    else:
        raise TypeError(f"a checkpoint holds only dicts, lists, tuples, numbers, strings and tensors, "
                        f"not {type(x).__name__}")


def digest(state: dict) -> str:
    """The sha256 (hex) of every entry of ``state`` but ``sha256`` itself, in its canonical form."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- files
def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(path: str, state: dict) -> None:
    """``torch.save`` to ``path``, flushed to the disk."""
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(path: str, state: dict, keep_previous: bool = True) -> None:
    """Write ``state`` (plus ``format`` and its ``sha256``) to ``path`` atomically.

    The new checkpoint is written to ``path.tmp``; then the current one (if any) becomes
    ``path.prev`` (``keep_previous``) and the new one ``path``, each by ``os.replace``. A crash
    leaves ``path`` whole, or ``path.prev`` whole and ``path`` missing; :func:`find_checkpoint`
    handles both.
    """
    folder = os.path.dirname(path)
    os.makedirs(folder or ".", exist_ok=True)
    state = {**state, "format": FORMAT}
    state["sha256"] = digest(state)
    tmp = f"{path}.tmp"
    _write(tmp, state)
    if keep_previous and os.path.exists(path):
        os.replace(path, previous_path(path))
    os.replace(tmp, path)
    _fsync_dir(folder)


def load_checkpoint(path: str, stage: Optional[str] = None) -> dict:
    """The verified dict saved at ``path``, tensors on the CPU, read with ``weights_only=True``.

    Raises :class:`CheckpointError` (a ``ValueError``) naming the file when it cannot be read
    (truncated, not a checkpoint, or holding anything but plain data and tensors), has no checksum
    (written before it had one), fails its checksum (damaged), or, with ``stage``, belongs to
    another stage.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(path, f"cannot be read: it is truncated, damaged or not a radi_fast checkpoint "
                                    f"({type(e).__name__}: {reason})") from None
    if not isinstance(state, dict) or "sha256" not in state:
        raise CheckpointError(path, "has no checksum: it was not written by this version of radi_fast "
                                    "(or is not a checkpoint)")
    try:
        ok = digest(state) == state["sha256"]
    except TypeError:
        ok = False
    if not ok:
        raise CheckpointError(path, "is corrupt: its contents do not match its checksum (sha256)")
    if stage is not None and state.get("stage") != stage:
        raise CheckpointError(path, f"belongs to stage {state.get('stage')!r}, not {stage!r} (a file copied "
                                    "from another stage?)")
    return state


def find_checkpoint(path: str, stage: str) -> Tuple[Optional[dict], Optional[str], List[CheckpointError]]:
    """The newest good checkpoint of ``stage``: ``path``, else ``path.prev``.

    Returns ``(state, the file it came from, the problems of the files skipped)``; ``(None, None,
    problems)`` when neither file is there or usable. A missing file is not a problem.
    """
    problems = []
    for candidate in (path, previous_path(path)):
        if not os.path.isfile(candidate):
            continue
        try:
            return load_checkpoint(candidate, stage), candidate, problems
        except CheckpointError as e:
            problems.append(e)
    return None, None, problems


def quarantine(path: str) -> str:
    """Move a bad checkpoint out of the way (``<path>.corrupt``, kept for inspection) so that it is
    never reused nor rotated into ``.prev``; returns the new name."""
    bad = f"{path}.corrupt"
    os.replace(path, bad)
    return bad


# ---------------------------------------------------------------------------------------- settings
def stage_fingerprint(cfg: Config) -> dict:
    """What a stage-1 checkpoint must agree with on ``--resume``: the data, synthetic, model and
    optim settings (but ``student_epochs``, and ``individual_epochs`` at its default 0, so that
    checkpoints written before it existed still match), the seed and the precision."""
    fp = {f"{s}.{k}": v for s in ("data", "synthetic", "model", "optim") for k, v in asdict(getattr(cfg, s)).items()}
    fp.update({"run.seed": cfg.run.seed, "run.precision": cfg.run.precision})
    fp.pop("optim.student_epochs")
    if not fp["optim.individual_epochs"]:
        fp.pop("optim.individual_epochs")
    return fp


def student_fingerprint(cfg: Config, base: dict, spec: str, scheme: Scheme) -> dict:
    """What a student's checkpoint must agree with: ``base`` plus its initialisation, epochs and scheme."""
    return {**base, "run.student_init": cfg.run.student_init, "optim.student_epochs": cfg.optim.student_epochs,
            "scheme.spec": spec, **{f"scheme.{k}": v for k, v in asdict(scheme.cfg).items()}}


def fingerprint_diff(saved: dict, wanted: dict) -> list:
    """The sorted keys on which two settings fingerprints differ (a key missing on one side differs)."""
    return sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))


# ---------------------------------------------------------------------------------------- randomness
def seed_everything(seed: int) -> None:
    """Seed the global Python, numpy (``seed mod 2**32``) and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(loss_gen: torch.Generator) -> dict:
    """This process's RNG states: torch, numpy (as tensors: loadable with ``weights_only=True``),
    Python, CUDA (None without CUDA) and ``loss_gen``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    assert kind == "MT19937"
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)},
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loss": loss_gen.get_state()}


def set_rng_state(state: dict, loss_gen: torch.Generator) -> None:
    """Restore what :func:`rng_state` returned (the CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    loss_gen.set_state(state["loss"])
