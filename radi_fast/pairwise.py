"""RADI-P (sec. 3.2): the teacher's pairwise uncertainty (eq. 5), optimal-transport soft margins
(Algorithm 1) and the soft-margin ranking loss (eq. 4).

The public faces: argument checks and the choice of backend (``ops/pairwise_cpu.py``: PyTorch,
any device; ``ops/pairwise_triton.py``: Triton kernels, CUDA). The conventions the paper leaves
open (variance, marginals, "auto" lam, stopping, top-k, normalisation, margin modes) are in
docs/design.md and the README's "Math choices".
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from ._backend import resolve_backend
from ._constants import DEFAULT_MAX_ITER, DEFAULT_TOL, DEFAULT_TOP_K, MARGIN_MODES, PAIRWISE_BACKENDS, SINKHORN_SCHEMES
from ._random import draw_seed
from ._validation import (
    check_choice,
    check_generator,
    check_int,
    check_lam,
    check_positive,
    check_reduction,
    check_same_dim,
    check_scores,
    check_tensor,
    combine_valid,
    reduce,
)
from .ops import pairwise_cpu


def validate_pairwise_inputs(student_logits, teacher_mc_logits, teacher_logits, lengths, mask=None,
                             name_mc: str = "teacher_mc_logits") -> Optional[torch.Tensor]:
    """Shapes, dtypes, devices (and, where the value checks run, values: finite on the valid
    answers) of the RADI-P inputs; returns the valid answers (None, int64 ``lengths`` or a [B, N]
    bool mask, :func:`radi_fast._validation.combine_valid`). Raises ``ValueError`` naming the
    argument."""
    check_tensor(teacher_mc_logits, name_mc, 3, finite=False)
    if teacher_mc_logits.shape[1] < 2:
        raise ValueError(f"{name_mc} needs T >= 2 MC-dropout passes in dim 1 to estimate a variance, "
                         f"got T = {teacher_mc_logits.shape[1]}")
    if student_logits is not None:
        check_tensor(student_logits, "student_logits", 2, finite=False)
        check_same_dim(student_logits, "student_logits", 0, teacher_mc_logits, name_mc, 0)
        check_same_dim(student_logits, "student_logits", 1, teacher_mc_logits, name_mc, 2)
        if student_logits.device != teacher_mc_logits.device:
            raise ValueError(f"student_logits is on {student_logits.device} but {name_mc} on {teacher_mc_logits.device}")
    if teacher_logits is not None:
        check_tensor(teacher_logits, "teacher_logits", 2, finite=False)
        check_same_dim(teacher_logits, "teacher_logits", 0, teacher_mc_logits, name_mc, 0)
        check_same_dim(teacher_logits, "teacher_logits", 1, teacher_mc_logits, name_mc, 2)
    B, _, N = teacher_mc_logits.shape
    valid = combine_valid(mask, lengths, B, N, teacher_mc_logits.device)
    for x, name in ((teacher_mc_logits, name_mc), (student_logits, "student_logits"),
                    (teacher_logits, "teacher_logits")):
        if x is not None:
            check_scores(x, name, valid)
    return valid


def validate_sinkhorn_args(lam, max_iter, tol, sinkhorn: str = "auto") -> Optional[float]:
    """``lam`` ("auto" -> None, else > 0), ``max_iter >= 1``, ``tol >= 0``, ``sinkhorn`` a scheme."""
    lam_value = check_lam(lam)
    check_int(max_iter, "max_iter", minimum=1)
    check_positive(tol, "tol", allow_zero=True)
    check_choice(sinkhorn, "sinkhorn", SINKHORN_SCHEMES)
    return lam_value


def validate_pairwise_options(margin, margin_mode, lam, top_k, max_iter, tol, reduction, backend, sinkhorn):
    """Every RADI-P option, as :func:`radi_pairwise_loss` and :class:`RadiPairwiseLoss` (at
    construction) check them; returns ``(margin as a float, lam as a float or None)``."""
    margin = check_positive(margin, "margin", allow_zero=True)
    check_choice(margin_mode, "margin_mode", MARGIN_MODES)
    lam_value = validate_sinkhorn_args(lam, max_iter, tol, sinkhorn)
    check_int(top_k, "top_k", minimum=1)
    check_reduction(reduction)
    if backend is not None:
        check_choice(backend, "backend", PAIRWISE_BACKENDS)
    return margin, lam_value


def resolve_sinkhorn(sinkhorn: str, lam_value: Optional[float], tol: float) -> str:
    """"auto": Algorithm 1 as written with lam="auto" (it converges in a handful of iterations
    there) or a fixed budget (``tol = 0``: the result is that of ``max_iter`` iterations of
    Algorithm 1), else Anderson acceleration; any other scheme as given."""
    if sinkhorn != "auto":
        return sinkhorn
    return "plain" if lam_value is None or tol == 0 else "anderson"


class SinkhornInfo(NamedTuple):
    """Per sample: Sinkhorn ``iterations`` [B] (int64) and ``marginal_error`` [B], the L-infinity
    error of W's row and column sums against 1 at the end (None where not computed)."""

    iterations: torch.Tensor
    marginal_error: Optional[torch.Tensor] = None


def pairwise_uncertainty(mc_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 5, ``U_ij = Var_t(P_ti - P_tj)``: [B, T, K] -> [B, K, K] (diagonal 0), dense.

    For inspection and small K; computed as ``||z_i - z_j||^2 / T`` from the centred points, never
    from the [B, T, K, K] differences. fp64 stays fp64, other dtypes give fp32.
    """
    validate_pairwise_inputs(None, mc_logits, None, None, name_mc="mc_logits")
    return pairwise_cpu.uncertainty_dense(mc_logits)


def sinkhorn_margin_weights(mc_logits: torch.Tensor, lam="auto", max_iter: int = DEFAULT_MAX_ITER,
                            tol: float = DEFAULT_TOL, *, sinkhorn: str = "auto", return_info: bool = False):
    """Algorithm 1 on the uncertainty of ``mc_logits`` [B, T, K] -> W [B, K, K], dense.

    ``W = diag(u) exp(-U/lam) diag(v)`` with the diagonal excluded, scaled to ones marginals.
    ``lam``: a positive float or "auto" (per sample, the mean off-diagonal U). Stops when
    ``max |log v_t - log v_{t-1}| <= tol`` (Anderson: ``max |F(x) - x| <= tol``, one half-step) or
    after ``max_iter`` iterations (Anderson: ``2 max_iter`` half-steps). ``sinkhorn``: "auto",
    "plain", "overrelaxed", "anderson" or "scaling" (docs/sinkhorn.md; the same W to the
    tolerance). ``return_info``: return ``(W, SinkhornInfo)``.
    """
    validate_pairwise_inputs(None, mc_logits, None, None, name_mc="mc_logits")
    lam_value = validate_sinkhorn_args(lam, max_iter, tol, sinkhorn)
    W, iterations, error = pairwise_cpu.sinkhorn_weights_dense(mc_logits, lam_value, max_iter, tol,
                                                               resolve_sinkhorn(sinkhorn, lam_value, tol))
    return (W, SinkhornInfo(iterations, error)) if return_info else W


def radi_pairwise_loss(student_logits: torch.Tensor, teacher_mc_logits: torch.Tensor,
                       teacher_logits: Optional[torch.Tensor] = None, margin: float = 1.0, margin_mode: str = "ot",
                       lam="auto", top_k: int = DEFAULT_TOP_K, max_iter: int = DEFAULT_MAX_ITER,
                       tol: float = DEFAULT_TOL, reduction: str = "mean", *,
                       generator: Optional[torch.Generator] = None, lengths: Optional[torch.Tensor] = None,
                       mask: Optional[torch.Tensor] = None, backend: Optional[str] = None, sinkhorn: str = "auto",
                       return_info: bool = False):
    """RADI-P: eq. 4 with the soft margins ``M = margin * W``.

    Args:
        student_logits: [B, N] student scores ``p_S`` (gradients flow here only).
        teacher_mc_logits: [B, T, N] teacher scores from T >= 2 MC-dropout passes (constant).
        teacher_logits: [B, N] teacher scores defining the ranking; default the MC mean.
        margin: m >= 0 (the paper searches {0.1, 1, 10}).
        margin_mode: "ot" (the paper's method), "uniform", "random" or "uncertainty" (Table 3).
        lam: Sinkhorn smoothing, a positive float or "auto" (per-sample mean off-diagonal U).
            Any positive value gives W in [0, 1]: a lam below ``max U / 2^14`` (fp32; ``2^32``
            in fp64) is solved at that bound, where W is already the hard assignment
            (docs/numerics.md). Teacher logits of any magnitude are scaled internally (exact).
        top_k: each sample keeps the teacher's top ``top_k`` valid answers (the paper: 2500).
        max_iter, tol: Sinkhorn budget and stopping test (``max |Δ log v| <= tol``). ``tol=0``
            runs exactly ``max_iter`` iterations: on CUDA (Triton) a whole forward + backward is
            then free of host synchronisation and capturable in a CUDA graph. With ``tol > 0``
            the Triton path looks at the stopping flags through an asynchronous copy every few
            iterations (no synchronisation per iteration: the host waits for a flag only once it
            has launched a few iterations past it, so the device stays busy; not capturable in
            a CUDA graph). The torch backend reads on the host (meant for CPUs).
        reduction: "mean" (default), "sum" or "none" ([B]). An empty batch (B = 0) gives 0 for
            "mean" and "sum" (not NaN); rows without answers (N = 0) contribute 0, like fully
            masked rows (the README's rule for empty batches).
        generator: seeds the "random" mode (the global RNG when None; that mode reads its seed
            on the host, so ``torch.compile`` breaks its graph there).
        lengths: optional [B] numbers of valid answers (columns ``>= lengths[b]`` are padding).
        mask: optional [B, N] bool, True = a valid answer (any positions); combined with
            ``lengths`` when both are given. Invalid answers never influence the loss, their
            gradient is exactly 0, and they may hold NaN/inf in every input. A row with fewer
            than two valid answers contributes 0.
        backend: "auto" (Triton for CUDA tensors, torch otherwise), "torch" or "triton";
            default from ``RADI_FAST_BACKEND``.
        sinkhorn: the Sinkhorn scheme, "auto" (plain with lam="auto" or tol=0, else Anderson),
            "plain", "overrelaxed", "anderson" or "scaling" (docs/sinkhorn.md).
        return_info: also return a :class:`SinkhornInfo` (iterations per sample).

    Returns the loss in fp32 for fp16/bf16/fp32 inputs and fp64 for fp64 (also under
    ``torch.autocast``, which the computation ignores), or ``(loss, SinkhornInfo)``; the gradient
    reaches ``student_logits`` in its own dtype.

    Scale: per sample, the **mean** of the hinges over the teacher-ordered pairs (the sum divided
    by their number ``|R_p|``; 0 without such a pair), so it does not grow with K, unlike
    RADI-L's per-row sums (random scores, N = 2500: RADI-P 0.56 against ListNet 5.1 and ListMLE
    456 on hot 100 + cold 10): weigh them accordingly. Rows of W sum to 1, so the average OT
    margin is ``margin / (K - 1)``. The trainer (``radi_fast.train``) adds
    ``radi_p_alpha * loss`` with ``radi_p_alpha = 3`` and ``margin = 10`` to the classification
    loss.

    Checks: shapes, dtypes, devices and options always (``ValueError`` naming the argument);
    finite valid entries on CPU tensors, on CUDA only when asked (:func:`radi_fast.set_value_checks`
    or ``RADI_FAST_VALIDATE=1``: they synchronise), never under ``torch.compile``.
    """
    valid = validate_pairwise_inputs(student_logits, teacher_mc_logits, teacher_logits, lengths, mask)
    margin, lam_value = validate_pairwise_options(margin, margin_mode, lam, top_k, max_iter, tol, reduction, backend,
                                                  sinkhorn)
    check_generator(generator)
    seed = draw_seed(generator) if margin_mode == "random" else 0
    if resolve_backend(backend, student_logits.device) == "triton":
        from .ops import pairwise_triton

        op = pairwise_triton.pairwise_loss_call
    else:
        op = pairwise_cpu.pairwise_loss_call
    scheme = resolve_sinkhorn(sinkhorn, lam_value, tol)
    per_sample, _, iterations = op(student_logits, teacher_mc_logits, teacher_logits, valid, margin, margin_mode,
                                   lam_value, top_k, max_iter, float(tol), seed, scheme)
    loss = reduce(per_sample, reduction)
    return (loss, SinkhornInfo(iterations)) if return_info else loss


class RadiPairwiseLoss(nn.Module):
    """``nn.Module`` form of :func:`radi_pairwise_loss` (same arguments, checked and stored at
    construction: a bad setting raises ``ValueError`` there, as :class:`RadiListwiseLoss` does)."""

    def __init__(self, margin: float = 1.0, margin_mode: str = "ot", lam="auto", top_k: int = DEFAULT_TOP_K,
                 max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL, reduction: str = "mean",
                 backend: Optional[str] = None, sinkhorn: str = "auto"):
        super().__init__()
        validate_pairwise_options(margin, margin_mode, lam, top_k, max_iter, tol, reduction, backend, sinkhorn)
        self.margin, self.margin_mode, self.lam, self.top_k = margin, margin_mode, lam, top_k
        self.max_iter, self.tol, self.reduction, self.backend = max_iter, tol, reduction, backend
        self.sinkhorn = sinkhorn

    def forward(self, student_logits, teacher_mc_logits, teacher_logits=None, *, generator=None, lengths=None,
                mask=None):
        return radi_pairwise_loss(student_logits, teacher_mc_logits, teacher_logits, self.margin, self.margin_mode,
                                  self.lam, self.top_k, self.max_iter, self.tol, self.reduction,
                                  generator=generator, lengths=lengths, mask=mask, backend=self.backend,
                                  sinkhorn=self.sinkhorn)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, margin_mode={self.margin_mode!r}, lam={self.lam!r}, top_k={self.top_k}, "
                f"max_iter={self.max_iter}, tol={self.tol}, reduction={self.reduction!r}, sinkhorn={self.sinkhorn!r}")
