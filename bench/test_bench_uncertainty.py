"""Eq. 5 alone: MC logits [B, T, K] -> U [B, K, K] (radi_fast's dense public helper
``pairwise_uncertainty``, the literal [T, K, K] form, cdist-style dense PyTorch eager / compiled)."""
import pytest

import providers as P

PARAMS, IDS = P.params("uncertainty")


@pytest.mark.parametrize("B, K, provider", PARAMS, ids=IDS)
def test_uncertainty(bench_run, B, K, provider):
    inp = P.cached_inputs(("uncertainty", B, K), lambda: P.uncertainty_inputs(B, K))
    bench_run("uncertainty", P.get_provider("uncertainty", provider), inp,
              group=f"uncertainty B={B} K={K} T={inp.T}")
