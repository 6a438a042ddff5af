"""TEMP shim: the ops-level CPU pairwise entry points that bench/providers.py calls.

Stands in for the CPU backend's module at this path until it lands (it replaces this file).
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..pairwise import (
    CPU_BLOCK_ELEMENTS,
    PairwiseProblem,
    chunks,
    prepare_pairwise,
    sinkhorn_log_potentials_cpu,
)

__all__ = ["prepare_pairwise", "solve_sinkhorn"]


def solve_sinkhorn(problem: PairwiseProblem, max_iter: int, tol: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 for the whole batch: natural-log potentials (f, g), each [B, K].

    Samples go in chunks whose K x K kernel fits ``CPU_BLOCK_ELEMENTS``, sharing one workspace,
    as the CPU loss chunks them.
    """
    B, K = problem.points.shape[0], problem.points.shape[1]
    chunk = max(1, CPU_BLOCK_ELEMENTS // max(1, K * K))
    workspace = problem.points.new_empty(min(B, chunk) * K * K)
    fs, gs = [], []
    for s in chunks(B, chunk):
        sol = sinkhorn_log_potentials_cpu(problem, max_iter, tol, s, out=workspace)
        fs.append(sol.f)
        gs.append(sol.g)
    return torch.cat(fs), torch.cat(gs)
