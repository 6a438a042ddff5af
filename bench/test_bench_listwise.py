"""RADI-L forward + backward for each listwise loss: teacher scores [B, N = K], hot 100, cold 10,
Zipf sampling (alpha 1), the paper's defaults; radi_fast vs the literal reference on the same
sub-lists (the draw is inside both timed functions). The sampler alone is ``test_bench_sampler.py``."""
import pytest

import providers as P
from radi_fast.listwise import LISTWISE_LOSSES

CASES = [(B, K, loss, name) for B, K in P.shapes("radi_l") for loss in LISTWISE_LOSSES
         for name in P.provider_names("radi_l")]


@pytest.mark.parametrize("B, K, loss, provider", CASES, ids=[f"B{B}-N{K}-{l}-{n}" for B, K, l, n in CASES])
def test_radi_l_fwd_bwd(bench_run, B, K, loss, provider):
    inp = P.cached_inputs(("radi_l", B, K, loss), lambda: P.listwise_inputs(B, K, loss))
    bench_run("radi_l", P.get_provider("radi_l", provider), inp, group=f"RADI-L {loss} fwd+bwd B={B} N={K}",
              extra={"loss": loss}, key=("radi_l", B, K, loss))
