"""``backend_info()``: which implementation each op uses in this process (for bug reports and
benchmarks)."""
from __future__ import annotations

import os

import torch

from ._backend import triton_available, triton_interpret
from .ops import sampler


def backend_info() -> dict:
    """A dict saying which implementation each op uses here, e.g. for bug reports and benchmarks."""
    info = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "triton": None,
        "triton_interpret": triton_interpret(),
        "RADI_FAST_BACKEND": os.environ.get("RADI_FAST_BACKEND", "auto"),
        "pairwise_cpu": "torch (blockwise, no [B, T, K, K])",
        "pairwise_cuda": "triton" if triton_available() else "torch",
    }
    if triton_available():
        import triton

        info["triton"] = triton.__version__
    status = sampler.extension_status()
    info["extension"] = status
    info["sampler"] = "compiled (radi_fast._C)" if status.get("extension") else "torch (fallback)"
    return info
