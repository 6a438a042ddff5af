"""Tile sizes and launch parameters of the RADI-P Triton kernels (docs/triton.md, "Tuning knobs")."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Optional

import torch


def compute_tl_dtype(dtype: torch.dtype):
    """The Triton compute dtype of a torch compute dtype (fp64 stays fp64, the rest is fp32)."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


@dataclass(frozen=True)
class TritonConfig:
    """Tile sizes and launch parameters. ``sink_*``: Sinkhorn row-sum kernel (its update kernel
    uses the same tiles); ``loss_*``: eq. 4 kernel (``loss_warps`` for "ot", whose tiles come from
    tensor-core products, ``loss_warps_other`` for the other margin modes); ``stats_bk``: answers
    per statistics program, or per loop iteration of the preparation kernel (one program per
    sample, each iteration waiting on its gathers: wide blocks keep more loads in flight).

    ``sink_acc``: accumulate ``2^x`` per pair and reduce once per program (more registers) rather
    than reducing each tile. ``sink_split``: column shares per row block (0: :func:`choose_split`
    from the SM count and ``split_ctas_per_sm``, the row-sum programs one SM holds at once, to fill
    the last wave). ``shift_lo_log2``, ``shift_hi_log2``: the window of row sums the shifted pass
    accepts (a narrow one forces the online fallback: tests). ``check_every``: host look at the
    Sinkhorn stopping flags every this many iterations; ``poll_ahead``: on CUDA the host waits for
    a flag in flight once it has launched this many iterations past it (0: never waits; ops/
    pairwise_triton.py ``StopPoll``). ``sink_maxnreg``: register cap of the
    Sinkhorn half-step kernel (0: the compiler's choice; -1: :func:`half_step_maxnreg` decides).
    ``sink_sym``: the plain, Anderson and over-relaxed schemes' half-steps exponentiate each
    unordered pair once (``sinkhorn_symmetric_half_step_kernel``, docs/triton.md "The symmetric
    half-step"; 0: every ordered pair, ``sinkhorn_half_step_kernel``) on blocks of ``sym_block``
    answers, in tiles of ``sym_rows`` x ``sym_block`` pairs with ``sym_warps`` warps,
    ``sym_ctas_per_sm`` programs per SM for the choice of shares; a sample whose ``F - G`` (base 2)
    spans more than ``sym_spread`` (its sums would scale by up to ``2^(sym_spread / 2)`` around 1)
    runs the shifted pass in that half-step. ``loss_sym``: the eq. 4 kernel visits each unordered
    pair once (``margin_ranking_symmetric_kernel`` on blocks of ``loss_bm`` answers, ``loss_bn``
    unused; 0: every ordered pair, ``margin_ranking_kernel`` on ``loss_bm`` x ``loss_bn`` tiles).
    ``direct_launch``: the Sinkhorn loop relaunches the symmetric half-step and the schemes'
    kernels it compiled through the compiled kernel's own launcher, skipping Triton's JIT dispatch
    (ops/direct_launch.py; 0: every launch through ``kernel[grid]``).
    Overridable with ``RADI_FAST_TRITON_CONFIG="sink_bm=64,sink_bn=64,sink_warps=4"``.
    """

    sink_bm: int = 128
    sink_bn: int = 128
    sink_warps: int = 8
    sink_stages: int = 2
    sink_acc: bool = False
    sink_split: int = 0
    sink_maxnreg: int = -1
    split_ctas_per_sm: int = 2
    shift_lo_log2: int = -60
    shift_hi_log2: int = 100
    loss_bm: int = 64
    loss_bn: int = 64
    loss_warps: int = 4
    loss_warps_other: int = 8
    loss_stages: int = 2
    stats_bk: int = 256
    check_every: int = 4
    poll_ahead: int = 4
    sink_sym: bool = True
    sym_block: int = 64
    sym_rows: int = 64
    sym_warps: int = 4
    sym_stages: int = 2
    sym_ctas_per_sm: int = 4
    sym_spread: int = 64
    loss_sym: bool = True
    direct_launch: bool = True


# the interpreter's cost is per tile op, not per element: large tiles (the tests cover small ones)
INTERPRETER_CONFIG = TritonConfig(sink_bm=128, sink_bn=128, sink_warps=4, sink_stages=1, loss_bm=128, loss_bn=128,
                                  stats_bk=128)


def parse_config_override(text: str, base: TritonConfig) -> TritonConfig:
    types = {f.name: f.type for f in fields(TritonConfig)}
    updates = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in types:
            raise ValueError(f"RADI_FAST_TRITON_CONFIG: unknown key {key!r}; expected one of {sorted(types)}")
        updates[key] = value.strip().lower() in ("1", "true", "yes") if types[key] in (bool, "bool") else int(value)
    return replace(base, **updates)


def default_config(interpret: bool, dtype: torch.dtype) -> TritonConfig:
    cfg = INTERPRETER_CONFIG if interpret else TritonConfig()
    if dtype == torch.float64 and not interpret:  # fp64 tiles cost twice the registers
        cfg = replace(cfg, sink_bm=64, sink_bn=64, sink_warps=4, split_ctas_per_sm=2, loss_bm=64, loss_bn=64,
                      loss_warps=4)
    override = os.environ.get("RADI_FAST_TRITON_CONFIG")
    if override:
        cfg = parse_config_override(override, cfg)
    return cfg


def half_step_maxnreg(cfg: TritonConfig, split_points: bool) -> Optional[int]:
    """The register cap of the Sinkhorn half-step kernel (None: none). Automatic (``sink_maxnreg``
    -1): 128 for 8 warps of fp32 row sums reduced per tile, which keeps two programs per SM (the
    fused update makes ptxas take 160 registers otherwise; under the cap the hot loop is the same
    and nothing spills, tests/test_triton_compile.py); no cap for the other tiles, where 128 would
    spill."""
    if cfg.sink_maxnreg >= 0:
        return cfg.sink_maxnreg or None
    return 128 if split_points and cfg.sink_warps == 8 and not cfg.sink_acc else None


def symmetric_maxnreg(cfg: TritonConfig, split_points: bool) -> Optional[int]:
    """The register cap of the symmetric half-step kernel (None: none). Automatic
    (``sink_maxnreg`` -1): 128 for fp32 tiles of 64 x 64 pairs on 4 warps (ptxas takes 129-130,
    which leaves three programs per SM instead of four; under the cap nothing spills,
    tests/test_triton_compile.py); none otherwise."""
    if cfg.sink_maxnreg >= 0:
        return cfg.sink_maxnreg or None
    small = cfg.sym_block == 64 and cfg.sym_rows == 64 and cfg.sym_warps == 4
    return 128 if split_points and small else None


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def point_lanes(T: int) -> int:
    """TP: the lanes of an augmented point, ``[y (T), p, q, 1]`` padded to a power of two >= 16
    (the K of a TF32 tensor-core product is a multiple of 8)."""
    return max(16, 1 << (T + 2).bit_length())


def padded_answers(K: int, cfg: TritonConfig) -> int:
    """KP: K rounded up to a whole number of every kernel's tiles (all powers of two)."""
    q = max(cfg.sink_bm, cfg.sink_bn, cfg.loss_bm, cfg.loss_bn, cfg.stats_bk, cfg.sym_block)
    return triton_cdiv(K, q) * q


def choose_split(n_programs: int, slots: int, max_split: int = 4) -> int:
    """Column shares per row block for the Sinkhorn row sums: the count that best fills the last
    wave of ``n_programs * split`` programs over ``slots`` concurrent ones, each extra share
    charged 1.5% (it re-reads its rows and writes one more partial sum)."""
    best, best_eff = 1, 0.0
    for split in range(1, max_split + 1):
        n = n_programs * split
        eff = n / (triton_cdiv(n, slots) * slots) * (1.0 - 0.015 * (split - 1))
        if eff > best_eff + 1e-9:
            best, best_eff = split, eff
    return best


def resolve_split(cfg: TritonConfig, n_programs: int, device: torch.device, ctas_per_sm: Optional[int] = None) -> int:
    """Column shares of the Sinkhorn row sums for this launch (``ctas_per_sm``: programs one SM
    holds at once, ``split_ctas_per_sm`` unless given)."""
    if cfg.sink_split > 0:
        return cfg.sink_split
    if device.type != "cuda":
        return 1
    slots = torch.cuda.get_device_properties(device).multi_processor_count * (ctas_per_sm or cfg.split_ctas_per_sm)
    return choose_split(n_programs, slots)
