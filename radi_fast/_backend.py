"""Which fast paths this process can use (a pure-PyTorch fallback is always there), and the
choice of RADI-P backend."""
from __future__ import annotations

import functools
import os
from typing import Optional

from ._constants import PAIRWISE_BACKENDS
from ._validation import check_choice


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Triton importable (it runs on CUDA, or on the CPU under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


@functools.lru_cache(maxsize=None)
def triton_interpret() -> bool:
    """Whether Triton runs its interpreter in this process (``TRITON_INTERPRET``, read once:
    Triton fixes the mode when the kernels are decorated, so set it before importing radi_fast)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def resolve_backend(backend: Optional[str], device) -> str:
    """RADI-P's backend: ``backend``, else ``RADI_FAST_BACKEND``, else "auto" (Triton on CUDA,
    torch otherwise). Returns "torch" or "triton"."""
    choice = backend if backend is not None else os.environ.get("RADI_FAST_BACKEND", "auto")
    check_choice(choice, "backend (or RADI_FAST_BACKEND)", PAIRWISE_BACKENDS)
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    return choice
