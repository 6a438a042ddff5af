"""Argument checks shared by every public entry point.

Each check raises ``ValueError`` naming the offending argument, so bad input never turns into a
silent NaN deep inside a kernel. Shape, dtype and device checks always run. Checks that read the
values (NaN/inf, ranges of ``lengths``) cost a host synchronisation on a GPU, so they run on CPU
tensors, and on CUDA tensors only when asked for (:func:`set_value_checks` or
``RADI_FAST_VALIDATE=1``); never while ``torch.compile`` traces.
"""
from __future__ import annotations

import numbers
import os
from typing import Optional, Sequence, Tuple

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_VALUE_CHECKS = {"on_accelerators": None}


def set_value_checks(on_accelerators: Optional[bool]) -> None:
    """Run the value checks (NaN/inf, ranges) on CUDA tensors too (True), never there (False), or
    follow ``RADI_FAST_VALIDATE`` (None, the default: off unless the variable is 1)."""
    _VALUE_CHECKS["on_accelerators"] = on_accelerators


def value_checks_enabled(x: torch.Tensor) -> bool:
    """Whether the checks that read ``x``'s values run now (see the module docstring)."""
    if torch.compiler.is_compiling():
        return False
    if x.device.type == "cpu":
        return True
    forced = _VALUE_CHECKS["on_accelerators"]
    if forced is None:
        return os.environ.get("RADI_FAST_VALIDATE", "0").strip().lower() in ("1", "true", "yes", "on")
    return forced


def check_has_data(x: torch.Tensor, name: str) -> torch.Tensor:
    """A tensor whose values can be computed on: not on the meta device (shapes without data)."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (a shape without data): radi_fast computes on real "
                         f"tensors (CPU or CUDA); materialise it first")
    return x


def check_tensor(x, name: str, ndim: int, *, floating: bool = True, finite: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    check_has_data(x, name)
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if floating and x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor (fp16, bf16, fp32 or fp64), got {x.dtype}")
    if finite and floating and x.numel() and value_checks_enabled(x) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def check_same_dim(a: torch.Tensor, a_name: str, a_dim: int, b: torch.Tensor, b_name: str, b_dim: int) -> None:
    if a.shape[a_dim] != b.shape[b_dim]:
        raise ValueError(
            f"shape mismatch: {a_name} has size {a.shape[a_dim]} in dim {a_dim} but {b_name} has "
            f"size {b.shape[b_dim]} in dim {b_dim} (shapes {tuple(a.shape)} and {tuple(b.shape)})"
        )


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return value


def check_number(value, name: str) -> float:
    """A real number (int, float, a NumPy scalar or a one-element real tensor) as a float. Strings
    and bools are refused: ``float("1")`` and ``float(True)`` would silently accept them."""
    if isinstance(value, torch.Tensor):
        ok = value.numel() == 1 and value.dtype != torch.bool and not value.is_complex() \
            and value.device.type != "meta"
    else:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)  # NumPy's bool_ is no Real
    if not ok:
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def check_positive(value, name: str, *, allow_zero: bool = False) -> float:
    v = check_number(value, name)
    if not (v == v) or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def check_int(value, name: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_lam(lam) -> Optional[float]:
    """``"auto"`` -> None (per-sample scale), else a positive float."""
    if isinstance(lam, str):
        if lam != "auto":
            raise ValueError(f"lam must be a positive float or 'auto', got {lam!r}")
        return None
    return check_positive(lam, "lam")


def check_generator(generator, name: str = "generator") -> Optional[torch.Generator]:
    """None (the global RNG) or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"{name} must be a torch.Generator or None, got {generator!r} ({type(generator).__name__}); "
                         f"to seed, pass torch.Generator().manual_seed(seed)")
    return generator


def check_reduction(reduction: str) -> str:
    return check_choice(reduction, "reduction", ("mean", "sum", "none"))


def check_lengths(lengths, batch: int, n: int, name: str = "lengths") -> Optional[torch.Tensor]:
    """Per-row numbers of valid answers (answers at positions >= length are padding)."""
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    check_has_data(lengths, name)
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"{name} must be 1-D with one entry per row ({batch}), got shape {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {lengths.dtype}")
    if batch and value_checks_enabled(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > n):
        raise ValueError(f"{name} must lie in [1, {n}], got min {int(lengths.min())} and max {int(lengths.max())}")
    return lengths.to(torch.int64)


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """"mean", "sum" or "none" over the rows; the mean over an empty batch is 0 (like its sum),
    not NaN: an empty batch adds nothing (README, "Empty batches")."""
    if reduction == "mean":
        return per_sample.mean() if per_sample.shape[0] else per_sample.sum()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def check_mask(mask, batch: int, n: int, device, name: str = "mask") -> Optional[torch.Tensor]:
    """A [B, N] bool tensor, True = a valid answer (any positions), on ``device`` (a mask on
    another device is copied there)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    check_has_data(mask, name)
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True = a valid answer), got {mask.dtype}")
    if tuple(mask.shape) != (batch, n):
        raise ValueError(f"{name} must have shape [B, N] = {(batch, n)}, got {tuple(mask.shape)}")
    return mask.to(device)


def combine_valid(mask, lengths, batch: int, n: int, device) -> Optional[torch.Tensor]:
    """The valid answers from ``mask`` ([B, N] bool) and ``lengths`` ([B]), checked: None (all
    valid), the int64 ``lengths`` alone, or a [B, N] bool mask (both combined by "and")."""
    mask = check_mask(mask, batch, n, device)
    lengths = check_lengths(lengths, batch, n)
    if mask is None or lengths is None:
        return mask if lengths is None else lengths
    return mask & (torch.arange(n, device=device)[None, :] < lengths.to(device)[:, None])


def valid_mask(valid: Optional[torch.Tensor], batch: int, n: int, device) -> Optional[torch.Tensor]:
    """``valid`` (None, [B] lengths or a [B, N] mask) as a [B, N] bool mask, or None."""
    if valid is None or valid.dim() == 2:
        return valid
    return torch.arange(n, device=device)[None, :] < valid.to(device)[:, None]


def check_scores(scores, name: str, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """A 2-D (or [B, T, N]) floating tensor whose valid entries are finite; ``valid``: None,
    [B] lengths or a [B, N] bool mask (:func:`combine_valid`).

    Padding entries may hold anything (e.g. -inf or NaN): they are never read. The finiteness
    test reads the data, so it follows :func:`value_checks_enabled`.
    """
    if not (isinstance(scores, torch.Tensor) and scores.dim() == 3):
        check_tensor(scores, name, 2, finite=False)
    if scores.numel() == 0 or not value_checks_enabled(scores):
        return scores
    finite = torch.isfinite(scores)
    mask = valid_mask(valid, scores.shape[0], scores.shape[-1], scores.device)
    if mask is not None:
        finite = finite | ~(mask[:, None, :] if scores.dim() == 3 else mask)
    if not bool(finite.all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf) among the valid answers")
    return scores


def check_list_sizes(hot, cold, n_answers: int, lengths: Optional[torch.Tensor]) -> Tuple[int, int]:
    """``hot`` and ``cold`` are non-negative ints with ``hot + cold`` <= every row's valid answers."""
    hot = check_int(hot, "hot")
    cold = check_int(cold, "cold")
    available = n_answers if lengths is None or lengths.numel() == 0 else int(lengths.min())
    if hot + cold > available:
        where = "the number of answers N" if lengths is None else "min(lengths)"
        raise ValueError(
            f"hot + cold must be <= {where} ({available}), got hot={hot} and cold={cold}"
        )
    return hot, cold
