"""Python face of the compiled partial-list sampler ``torch.ops.radi_fast.partial_list``.

The op lives in the C++/CUDA extension ``radi_fast._C`` (``csrc/``, see ``docs/sampler.md``).
This module loads it when it was built, validates arguments (``ValueError`` naming the argument,
before anything reaches C++), registers the op's fake (meta) implementation so that
``torch.compile`` can trace it, and reports what is available for
:func:`radi_fast.backend_info`. When the extension is missing, :func:`compiled_available` is
False and :func:`radi_fast.sampling.sample_partial_list` uses the pure-PyTorch sampler, calling
:func:`warn_fallback_once` first.

Semantics of ``partial_list_op(scores, hot, cold, scheme, alpha, seed, offset=0, lengths=None)``:
the teacher ranking of row ``b`` is its first ``L_b`` scores (``lengths[b]``, or ``N``) sorted by
score descending, ties to the lower column index (``-0.0 == +0.0``); the output ``[B, hot + cold]``
(int64 column indices) is the first ``hot`` of the ranking, then ``cold`` draws without
replacement from the remaining ``L_b - hot`` answers with probability by rank ``r = 1..L_b - hot``
(``"exp"``: ``exp(-alpha r)``, ``"zipf"``: ``r^-alpha``, ``"random"``: uniform), in draw order.
The draws are the Gumbel-top-k of ``log p_r - log(-log u_r)`` with ``u_r`` from Philox4x32-10
keyed by ``(seed, offset, b, r)``: the same ``(seed, offset)`` gives the same sub-lists on the
CPU (any number of threads) and on CUDA, and in the pure-PyTorch sampler
(``ops/sampler_torch.py``), which ports the same arithmetic.

Importing ``radi_fast`` imports this module, which loads the extension: the op
``torch.ops.radi_fast.partial_list`` is registered as soon as the package is imported.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Optional

import torch

from .._constants import SAMPLING_SCHEMES
from .._validation import check_choice, check_int, check_positive, check_scores, check_tensor

__all__ = [
    "SCHEMES",
    "compiled_available",
    "extension_status",
    "partial_list_op",
    "warn_fallback_once",
]

SCHEMES = SAMPLING_SCHEMES  # "zipf", "exp", "random"
_INT64_MIN, _UINT64 = -(2**63), 2**64

_ext = None
_error: Optional[str] = None
_warned = False


def _load() -> None:
    global _ext, _error
    if os.environ.get("RADI_FAST_NO_EXT", "").strip().lower() not in ("", "0", "false", "no", "off"):
        _error = "disabled by RADI_FAST_NO_EXT"
        return
    try:
        module = importlib.import_module("radi_fast._C")
        torch.ops.radi_fast.partial_list.default  # the library registered its op
    except Exception as exc:  # not built, or built against another torch
        _error = f"{type(exc).__name__}: {exc}"
        return
    _ext = module


_load()

if _ext is not None:

    @torch.library.register_fake("radi_fast::partial_list")
    def _partial_list_fake(scores, hot, cold, scheme, alpha, seed, offset=0, lengths=None):
        torch._check(scores.dim() == 2, lambda: "partial_list: scores must be 2-D")
        return scores.new_empty((scores.shape[0], hot + cold), dtype=torch.int64)


def compiled_available() -> bool:
    """True when ``radi_fast._C`` is loaded and ``torch.ops.radi_fast.partial_list`` exists."""
    return _ext is not None


def extension_status() -> dict:
    """``{"extension": bool, "cuda_kernels": bool, "openmp": bool, "error": str | None}``."""
    return {
        "extension": _ext is not None,
        "cuda_kernels": bool(getattr(_ext, "cuda_kernels", 0)),
        "openmp": bool(getattr(_ext, "openmp", 0)),
        "error": _error,
    }


def warn_fallback_once() -> None:
    """Warn, once per process, that the pure-PyTorch sampler replaces the missing extension."""
    global _warned
    if _warned or _ext is not None:
        return
    _warned = True
    warnings.warn(
        "radi_fast: the compiled sampler radi_fast._C is not available "
        f"({_error}); using the pure-PyTorch partial-list sampler instead (the same draws, "
        "slower). To build it, install torch and run `pip install --no-build-isolation -e .` in "
        "the radi_fast checkout.",
        RuntimeWarning,
        stacklevel=3,
    )


def _as_int64(value, name: str) -> int:
    """Any Python int, read modulo 2^64 as a signed int64 (the op's 64-bit key/counter words)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    try:
        value = int(value.__index__())
    except (AttributeError, TypeError):
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    return (value - _INT64_MIN) % _UINT64 + _INT64_MIN


_NONFINITE = "scores contains non-finite values (NaN or inf) among the valid answers"  # as check_scores


def validate_args(scores, hot, cold, scheme, alpha, seed, offset=0, lengths=None, *, check_finite=True):
    """Checks of :func:`partial_list_op`; returns the normalised ``(hot, cold, alpha, seed,
    offset, lengths)``. Raises ``ValueError`` naming the bad argument. ``check_finite=False``
    leaves the scan of the scores for non-finite values to the kernel (which does it anyway)."""
    check_tensor(scores, "scores", 2, finite=False)
    batch, n = scores.shape
    hot = check_int(hot, "hot")
    cold = check_int(cold, "cold")
    check_choice(scheme, "scheme", SCHEMES)
    alpha = check_positive(alpha, "alpha", allow_zero=True)
    seed = _as_int64(seed, "seed")
    offset = _as_int64(offset, "offset")
    if hot + cold > n:
        raise ValueError(f"hot + cold must be <= the number of answers N ({n}), got hot={hot} and cold={cold}")
    tracing = torch.compiler.is_compiling()
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor):
            lengths = torch.as_tensor(lengths)
        if lengths.dim() != 1 or lengths.shape[0] != batch:
            raise ValueError(f"lengths must be 1-D with one entry per row ({batch}), got shape {tuple(lengths.shape)}")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
        lengths = lengths.to(device=scores.device, dtype=torch.int64)
        if batch and not tracing:
            lo, hi = int(lengths.min()), int(lengths.max())
            if hi > n:
                raise ValueError(f"lengths must be <= N ({n}), got max {hi}")
            if lo < hot + cold:
                raise ValueError(f"hot + cold must be <= min(lengths) ({lo}), got hot={hot} and cold={cold}")
    if check_finite and not tracing:
        check_scores(scores, "scores", lengths)
    return hot, cold, alpha, seed, offset, lengths


def partial_list_op(scores: torch.Tensor, hot: int, cold: int, scheme: str, alpha: float, seed: int,
                    offset: int = 0, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Validated call of ``torch.ops.radi_fast.partial_list`` (see the module docstring).

    Args:
        scores: ``[B, N]`` teacher scores (fp16/bf16/fp32/fp64, CPU or CUDA); not differentiated.
        hot, cold: hot-list and cold-list sizes, ``hot + cold <= N`` (``<= min(lengths)``).
        scheme: ``"exp"``, ``"zipf"`` or ``"random"``; alpha: ``>= 0``.
        seed, offset: Philox key and stream offset (any ints, used modulo 2^64).
        lengths: optional ``[B]`` integer tensor of valid answers per row.

    Returns ``[B, hot + cold]`` int64 column indices. Raises ``ValueError`` for bad arguments and
    ``RuntimeError`` when the extension is not built (see :func:`compiled_available`).
    """
    # The CPU kernel scans the valid scores for NaN/inf while it reads them; its error is
    # re-raised as the ValueError below, so the scores are not read twice. The CUDA kernel does
    # not scan (a host read would synchronise): on CUDA the scan runs here when the value checks
    # are on (radi_fast.set_value_checks).
    on_cpu = not isinstance(scores, torch.Tensor) or scores.device.type == "cpu"
    hot, cold, alpha, seed, offset, lengths = validate_args(
        scores, hot, cold, scheme, alpha, seed, offset, lengths, check_finite=not on_cpu)
    if _ext is None:
        raise RuntimeError(f"radi_fast._C is not available ({_error}); build it with "
                           "`pip install --no-build-isolation -e .`")
    try:
        return torch.ops.radi_fast.partial_list(scores.detach(), hot, cold, scheme, alpha, seed, offset, lengths)
    except RuntimeError as exc:
        if "non-finite" in str(exc):
            raise ValueError(_NONFINITE) from None
        raise
