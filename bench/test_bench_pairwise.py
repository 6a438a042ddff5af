"""RADI-P forward + backward (eq. 5 -> Algorithm 1 -> eq. 4, and d loss / d student).

Providers (see ``providers.py``): radi_fast, the literal reference, dense PyTorch eager and
compiled. Every provider runs the package defaults: ``lam = "auto"`` (mean off-diagonal U per
sample), ``margin = 1``, ``top_k = K`` (all answers), Sinkhorn until
``max |log v_t - log v_(t-1)| <= 1e-5`` (at most 100 iterations): the same stopping test, so the
same number of iterations (radi_fast and the literal stop per sample, dense batch-wide).
"""
import pytest

import providers as P

PARAMS, IDS = P.params("radi_p")


@pytest.mark.parametrize("B, K, provider", PARAMS, ids=IDS)
def test_radi_p_fwd_bwd(bench_run, B, K, provider):
    inp = P.cached_inputs(("radi_p", B, K), lambda: P.pairwise_inputs(B, K))
    bench_run("radi_p", P.get_provider("radi_p", provider), inp, group=f"RADI-P fwd+bwd B={B} K={K} T={inp.T}")
