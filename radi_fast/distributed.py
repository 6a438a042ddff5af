"""Process-group plumbing for ``torchrun`` / DistributedDataParallel (PyTorch's own stack only).

``torchrun`` starts one process per device and gives each the environment variables ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` reads them,
picks the device (``cuda:LOCAL_RANK`` when CUDA is available, else the CPU) and the backend
(``nccl`` for CUDA devices, ``gloo`` for the CPU) and joins the process group. Without those
variables (a plain ``python -m radi_fast.train``) nothing is initialised and every helper below
is the single-process identity: ``rank() == 0``, ``world_size() == 1``, ``barrier()``,
``all_reduce_sum``, ``average_grads`` and ``wrap_model`` do nothing. This module is the trainer's
only rank-aware layer: the trainer calls these helpers and never asks whether it is distributed.

Randomness per rank (see ``docs/training.md``, "Distributed training"):

* the global torch / numpy / Python RNGs (dropout, MC dropout) of a stage are seeded with
  ``stage_seed + rank``;
* the generator handed to the RADI losses (RADI-L's cold-list sampler, RADI-P's random margins,
  STListNet's noise) is re-seeded before every step with :func:`loss_seed`
  ``(stage_seed, rank, epoch, step)``, so a step's draws depend on nothing else: not on the
  steps before it, not on a resume, and never coincide between ranks.
"""
from __future__ import annotations

import datetime
import os
from typing import Any, Iterable, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["launched", "init", "cleanup", "is_initialized", "rank", "local_rank", "world_size", "is_main",
           "barrier", "all_reduce_sum", "mean_over_ranks", "all_gather_object", "wrap_model", "average_grads",
           "backend_for", "loss_seed"]

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True when this process was started by ``torchrun`` (its environment variables are set)."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the process that logs, shows progress bars and writes files."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def select_device(device: str = "auto") -> torch.device:
    """The device of this process. ``auto`` is ``cuda`` when CUDA is available, else ``cpu``;
    under torchrun ``cuda`` becomes ``cuda:LOCAL_RANK``; an explicit ``cuda:N`` is kept."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and launched():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(device)


def init(device: str = "auto", timeout_s: float = 1800.0) -> torch.device:
    """Join torchrun's process group (once) and return this process's device (:func:`select_device`).

    Without torchrun's environment this only resolves ``device``. The backend follows the device:
    ``nccl`` when it is a GPU (so with ``device="auto"``: whenever CUDA is available), else
    ``gloo``.
    """
    dev = select_device(device)
    if not launched() or is_initialized():
        return dev
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend_for(dev), timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=dev if dev.type == "cuda" else None)
    return dev


def cleanup() -> None:
    """Leave the process group (the end of a run, after the last collective)."""
    if is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    # nccl only moves CUDA tensors; gloo moves CPU tensors
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over all ranks (a new tensor on ``t``'s device; ``t`` itself when alone)."""
    if not is_initialized():
        return t
    buf = t.detach().to(_comm_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def mean_over_ranks(x: float) -> float:
    """The mean of ``x`` over all ranks, summed in float64 (``x`` itself when alone)."""
    return float(all_reduce_sum(torch.tensor([x], dtype=torch.float64))[0]) / world_size()


def all_gather_object(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when alone)."""
    if not is_initialized():
        return [obj]
    out: List[Optional[Any]] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The module to train through: under torchrun ``model`` in DistributedDataParallel, which
    averages its gradients over the ranks in ``backward``; ``model`` itself when alone."""
    if not is_initialized():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[device] if device.type == "cuda" else None)


def average_grads(params: Iterable[torch.Tensor]) -> None:
    """Average the ``.grad`` of ``params`` over the ranks, in place: for parameters that live
    outside the DDP module (CTKD's temperature). Nothing when alone."""
    if not is_initialized():
        return
    for p in params:
        if p.grad is not None:
            p.grad.copy_(all_reduce_sum(p.grad) / world_size())


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def loss_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """The seed of the loss generator for one training step: a function of the stage seed, the
    process rank, the epoch and the step (batch index within the epoch), nothing else.

    ``splitmix64`` is chained over the four integers (each folded in with an xor, then mixed), so
    neighbouring seeds, ranks, epochs or steps give unrelated 63-bit seeds: two ranks never draw
    the same cold lists or margins, and a resumed run draws exactly what the uninterrupted run
    drew at the same step.
    """
    h = 0
    for v in (seed, rank, epoch, step):
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1  # torch.Generator.manual_seed takes any int; keep it non-negative
