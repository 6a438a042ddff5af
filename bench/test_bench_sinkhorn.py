"""Algorithm 1 alone: centred points z [B, K, T] -> potentials, at one fixed lam and exactly
``providers.SINKHORN_ITERS`` iterations (tol = 0) for every provider.

``lam_factor = 1``: lam = the batch's mean off-diagonal U (radi_fast's CPU path picks its plain
domain). ``lam_factor = 0.1`` (largest shape only, ``providers.SMALL_LAM_PROVIDERS``): a tenth of
it (max U/lam ~ 54 here), beyond radi_fast's plain-domain limit (cost 30 in fp32): it switches to
its log domain like POT, geomloss and dense. The literal reference stays in the plain domain, as
Algorithm 1 is written (its kernel entries reach e^-54, still representable in fp32; at a few
times smaller lam they underflow). POT and geomloss configuration: see the
docstring of ``providers.py``.
"""
import pytest

import providers as P

PARAMS, IDS = P.params("sinkhorn")
SMALL, SMALL_IDS = P.params("sinkhorn_small_lam", P.SMALL_LAM_PROVIDERS)


@pytest.mark.parametrize("B, K, provider", PARAMS, ids=IDS)
def test_sinkhorn(bench_run, B, K, provider):
    inp = P.cached_inputs(("sinkhorn", B, K, 1.0), lambda: P.sinkhorn_inputs(B, K))
    bench_run("sinkhorn", P.get_provider("sinkhorn", provider), inp,
              group=f"Sinkhorn x{P.SINKHORN_ITERS} B={B} K={K} lam=mean(U)")


@pytest.mark.parametrize("B, K, provider", SMALL, ids=[i + "-lam0.1" for i in SMALL_IDS])
def test_sinkhorn_small_lam(bench_run, B, K, provider):
    inp = P.cached_inputs(("sinkhorn", B, K, 0.1), lambda: P.sinkhorn_inputs(B, K, lam_factor=0.1))
    bench_run("sinkhorn", P.get_provider("sinkhorn", provider), inp,
              group=f"Sinkhorn x{P.SINKHORN_ITERS} B={B} K={K} lam=mean(U)/10")
