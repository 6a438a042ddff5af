import os

# Triton fixes interpreted vs compiled when a kernel is decorated, so the mode must be chosen
# before any test module imports the kernels: on a machine without a GPU the kernel tests run
# under the interpreter (RADI_FAST_TEST_DEVICE=cuda runs them compiled on a GPU).
if os.environ.get("RADI_FAST_TEST_DEVICE", "cpu") == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def make_mc(B, T, N, dtype=torch.float64, seed=0, scale=1.0):
    """Teacher MC logits with answer-dependent means (a real ranking) and dropout-like noise."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(B, 1, N, generator=g, dtype=torch.float64) * 2
    noise = torch.randn(B, T, N, generator=g, dtype=torch.float64) * 0.5 * scale
    return (mean + noise).to(dtype)
