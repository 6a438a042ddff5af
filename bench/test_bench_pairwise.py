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


# the host's share of a call: radi_pairwise_loss's eager path (an autograd.Function around the
# op's body) against the torch.library custom op it skips in plain eager mode (the same body; a
# ~0.1 ms difference per call on a 2-core CPU). A small shape, where the host's work dominates:
# on CUDA (Triton) B=32, K=64; on the CPU (torch backend) B=4, K=32.
def _dispatch_provider(name: str, use_op: bool) -> P.Provider:
    def build(inp):
        from radi_fast.ops import pairwise_cpu, pairwise_triton

        module = pairwise_triton if inp.dev.type == "cuda" and P.triton_available() else pairwise_cpu
        call = module.pairwise_loss_op if use_op else module.pairwise_loss_call
        t, s = inp.tensors, inp.settings
        return P._grad_thunk(lambda: call(t["student"], t["mc"], None, None, float(s["margin"]), "ot", None,
                                          s["top_k"], s["n_iter"], s["tol"], 0, "plain")[0].mean(),
                             t["student"], inp.dev)

    return P.Provider(name, build)


@pytest.mark.parametrize("provider", [_dispatch_provider("radi_fast", False), _dispatch_provider("custom_op", True)],
                         ids=["radi_fast", "custom_op"])
def test_radi_p_dispatch(bench_run, provider):
    B, K = (32, 64) if P.device().type == "cuda" else (4, 32)
    inp = P.cached_inputs(("radi_p_dispatch", B, K), lambda: P.pairwise_inputs(B, K))
    bench_run("radi_p_dispatch", provider, inp, group=f"RADI-P host dispatch B={B} K={K} T={inp.T}")
