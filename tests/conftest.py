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
