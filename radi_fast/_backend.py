"""Which fast paths this process can use; a pure-PyTorch fallback is always there."""
from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Triton importable (it runs on CUDA, or on the CPU under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def backend_info() -> dict:
    """A dict saying which implementation each op uses here, e.g. for bug reports and benchmarks."""
    import torch

    info = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "triton": None,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
        "RADI_FAST_BACKEND": os.environ.get("RADI_FAST_BACKEND", "auto"),
        "pairwise_cpu": "torch (blockwise, no [B, T, K, K])",
        "pairwise_cuda": "triton" if triton_available() else "torch",
    }
    if triton_available():
        import triton

        info["triton"] = triton.__version__
    try:
        from .ops import sampler

        status = sampler.extension_status()
    except Exception as exc:  # the extension module or its wrapper is missing
        status = {"extension": False, "error": repr(exc)}
    info["extension"] = status
    info["sampler"] = "compiled (radi_fast._C)" if status.get("extension") else "torch (fallback)"
    return info
