"""Defaults and the names of every option, in one place (the public modules re-export them)."""

# RADI-P
DEFAULT_TOP_K = 2500  # the paper restricts the pairs to the teacher's top 2500 answers
DEFAULT_MAX_ITER = 100
DEFAULT_TOL = 1e-5
UNCERTAINTY_EPS = 1e-6  # W = 1 / (U + eps) in the "uncertainty" margin mode
# a mean uncertainty below NEGLIGIBLE_FACTOR * (eps * max|logit|)^2 is rounding noise (identical
# MC passes): lam = 1 there, on every backend
NEGLIGIBLE_FACTOR = 64
MARGIN_MODES = ("ot", "uniform", "random", "uncertainty")
PAIRWISE_BACKENDS = ("auto", "torch", "triton")
# Sinkhorn schemes (docs/sinkhorn.md); "auto": "plain" with lam="auto" (a handful of iterations
# there) or tol=0 (a fixed budget of Algorithm 1), else "anderson"
SINKHORN_SCHEMES = ("auto", "plain", "overrelaxed", "anderson", "scaling")

# RADI-L
SAMPLING_SCHEMES = ("zipf", "exp", "random")
SUBLIST_SAMPLINGS = SAMPLING_SCHEMES + ("full",)
SAMPLER_BACKENDS = ("auto", "torch", "compiled")
LAMBDA_LOSSES = ("ranknet", "ndcg_loss1", "ndcg_loss2", "ndcg_loss2pp")
LISTWISE_LOSSES = ("listmle", "listnet", "stlistnet") + LAMBDA_LOSSES
