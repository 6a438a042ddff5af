"""Counter-based uniforms for the "random" margin mode.

Table 3's "Random" ablation draws one margin weight per answer pair from U[0, 1]. A K x K draw
cannot be kept in memory by the fast paths, so the weight of a pair is a pure function of
``(seed, row, answer_i, answer_j)``: a 32-bit integer hash (Wellons' lowbias32), evaluated the
same way by the literal reference (densely), the blockwise CPU path and the Triton kernels.
Answer indices are the original column indices of the answers, so the weight of a pair does not
depend on the top-k truncation or on how a path tiles the matrix.
"""
from __future__ import annotations

from typing import Optional

import torch

MASK32 = 0xFFFFFFFF
# 24 random bits -> a float exactly representable in fp32, in [0, 1).
UNIFORM_SCALE = 1.0 / (1 << 24)


def lowbias32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 integer hash on int64 tensors holding uint32 values."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    x = x ^ (x >> 16)
    return x


def row_hashes(seed: int, row: torch.Tensor) -> torch.Tensor:
    """``lowbias32(lowbias32(seed) ^ row)``: the per-row key of the pair hash (int64 holding uint32)."""
    return lowbias32(lowbias32(torch.as_tensor(seed & MASK32, dtype=torch.int64)) ^ row.to(torch.int64))


def pair_uniform(seed: int, row: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) weight of answer pair (i, j) in batch row ``row`` (broadcasting int64 tensors)."""
    h = row_hashes(seed, row)
    h = lowbias32(h ^ i.to(torch.int64))
    h = lowbias32(h ^ j.to(torch.int64))
    return (h >> 8).to(torch.float64) * UNIFORM_SCALE


def draw_seed(generator: Optional[torch.Generator]) -> int:
    """One 31-bit seed from ``generator`` (the global RNG when None)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
