"""radi_fast: fast, faithful RADI ranking distillation (Liang et al., CVPR 2024).

Public API (the contract later work builds on):

* :func:`classification_loss` (eq. 2)
* :func:`pairwise_uncertainty` (eq. 5), :func:`sinkhorn_margin_weights` (Algorithm 1)
* :func:`radi_pairwise_loss` / :class:`RadiPairwiseLoss` (RADI-P, eq. 4 with OT soft margins)
* :func:`radi_listwise_loss` / :class:`RadiListwiseLoss` (RADI-L, sec. 3.3)
* :mod:`radi_fast.metrics` (Acc@1, Hit@k, nDCG@k, iVQA accuracy)
* :func:`backend_info` (which fast paths are available in this process)
* :func:`set_value_checks` (NaN/inf and range checks on CUDA tensors: they synchronise)
"""
from . import metrics, reference
from ._report import backend_info
from ._version import __version__
from .ops import sampler as _sampler  # noqa: F401  (loads radi_fast._C: registers torch.ops.radi_fast.partial_list)
from ._validation import set_value_checks
from .classification import classification_loss
from .listwise import RadiListwiseLoss, radi_listwise_loss
from .pairwise import (
    RadiPairwiseLoss,
    pairwise_uncertainty,
    radi_pairwise_loss,
    sinkhorn_margin_weights,
)

__all__ = [
    "__version__",
    "RadiListwiseLoss",
    "RadiPairwiseLoss",
    "backend_info",
    "classification_loss",
    "metrics",
    "pairwise_uncertainty",
    "radi_listwise_loss",
    "radi_pairwise_loss",
    "reference",
    "set_value_checks",
    "sinkhorn_margin_weights",
]
