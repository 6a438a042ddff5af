"""Stage-2 training objectives: RADI and the schemes the paper compares it with (Table 2).

Every scheme maps one batch to ``L_cls + alpha * L_extra`` (or a changed ``L_cls``):

==================  =========================================================================
``baseline``        continued training with eq. 2 only (the "FrozenBiLM" row of Table 2)
``label_smoothing`` eq. 2 against ``(1 - sigma) * labels + sigma / N`` (``ls_sigma``)
``pseudo_label``    eq. 2 on the labels plus the teacher's top-k answers (``pl_topk``)
``kd``              vanilla KD (Hinton et al.): ``+ kd_alpha * tau^2 KL(p_T^tau || p_S^tau)``
``dkd``             decoupled KD (Zhao et al. 2022), adapted to a *set* of labelled answers (below)
``ctkd``            KD with a curriculum-learned temperature (Li et al. 2023), adversarial via a
                    gradient-reversal layer whose strength grows on a cosine curriculum
``radi_p``          ``+ radi_p_alpha * radi_pairwise_loss`` (RADI-P, sec. 3.2; margin modes)
``radi_l``          ``+ radi_l_alpha * radi_listwise_loss`` (RADI-L, sec. 3.3; samplings, losses)
``kd_radi_p``       KD and RADI-P together: ``+ kd_alpha * KD + radi_p_alpha * RADI-P`` (not in the paper)
``kd_radi_l``       KD and RADI-L together: ``+ kd_alpha * KD + radi_l_alpha * RADI-L`` (not in the paper)
==================  =========================================================================

DKD with several labels: DKD splits the distribution into the target class and the rest. With a
set ``A_x`` of labelled answers we treat ``A_x`` as one merged target: TCKD is the KL between the
binary distributions ``[sum_{a in A_x} p(a), 1 - sum_{a in A_x} p(a)]`` of teacher and student,
and NCKD the KL between their distributions renormalised over the answers *not* in ``A_x``. By the
chain rule of KL, ``KD = TCKD + b_T KL_within(A_x) + (1 - b_T) NCKD``: DKD reweights the first and
last terms and drops the middle one, the relative order of answers that are all labelled correct.
With a single label (this trainer's default, the paper's sec. 4.3 protocol) the middle term is 0
and this is exactly DKD.

Variants are selected with ``name:key=value`` specs, e.g. ``radi_p:margin_mode=uniform`` or
``kd:alpha=10`` (``alpha`` stands for the scheme's own weight, here ``kd_alpha``), see
:func:`build_scheme`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._constants import DEFAULT_TOP_K, LISTWISE_LOSSES, MARGIN_MODES, SINKHORN_SCHEMES, SUBLIST_SAMPLINGS
from ._settings import auto_or_positive, check_fields
from .classification import classification_loss
from .listwise import radi_listwise_loss
from .pairwise import radi_pairwise_loss


@dataclass
class SchemeConfig:
    """Hyper-parameters of every scheme (each scheme reads its own prefix)."""

    ls_sigma: float = field(
        default=0.1, metadata={"help": "label smoothing amount (paper: 0.1, 0.3, 0.5)", "min": 0, "max": 1})
    pl_topk: int = field(default=3, metadata={"help": "pseudo labels: the teacher's top-k (paper: 3, 5, 10)", "min": 1})
    kd_alpha: float = field(default=1.0, metadata={"help": "vanilla KD weight", "min": 0})
    kd_tau: float = field(default=8.0, metadata={"help": "vanilla KD temperature", "gt": 0})
    dkd_alpha: float = field(default=1.0, metadata={"help": "DKD: weight of TCKD (target vs. rest)", "min": 0})
    dkd_beta: float = field(default=2.0, metadata={"help": "DKD: weight of NCKD (among the non-targets)", "min": 0})
    dkd_tau: float = field(default=1.0, metadata={"help": "DKD temperature", "gt": 0})
    ctkd_alpha: float = field(default=1.0, metadata={"help": "CTKD weight", "min": 0})
    ctkd_tau_min: float = field(
        default=1.0, metadata={"help": "CTKD: tau = tau_min + tau_range * sigmoid(theta)", "gt": 0})
    ctkd_tau_range: float = field(default=4.0, metadata={"help": "CTKD: see ctkd_tau_min", "min": 0})
    ctkd_lambda_max: float = field(
        default=1.0, metadata={"help": "CTKD: final strength of the reversed gradient on theta", "min": 0})
    ctkd_curriculum_epochs: int = field(
        default=0, metadata={"help": "epochs over which lambda rises 0 -> max (0: all epochs)", "min": 0})
    radi_p_alpha: float = field(
        default=3.0, metadata={"help": "RADI-P weight (paper searches 0.1 ... 1000)", "min": 0})
    margin: float = field(default=10.0, metadata={"help": "RADI-P margin m (paper searches 0.1, 1, 10)", "min": 0})
    margin_mode: str = field(default="ot", metadata={
        "help": "RADI-P's margin weights: OT soft margins (the paper's), or Table 3's ablations",
        "choices": MARGIN_MODES})
    lam: str = field(default="auto", metadata={
        "help": 'RADI-P Sinkhorn smoothing ("auto": the mean pairwise uncertainty of each sample)',
        "check": auto_or_positive, "rule": "'auto' or a positive number"})
    lam_scale: float = field(default=1.0, metadata={"help": (
        "RADI-P: lam is multiplied by this (with lam=auto: each sample's own mean uncertainty times it; "
        "0.3: sharper OT margins)"), "gt": 0})
    sinkhorn: str = field(default="auto", metadata={
        "help": "RADI-P's Sinkhorn scheme (auto: plain with lam=auto or tol 0, else anderson; docs/sinkhorn.md)",
        "choices": SINKHORN_SCHEMES})
    top_k: int = field(default=0, metadata={"help": (
        "RADI-P keeps the teacher's top-k answers; 0 = auto: the paper's 2500, 100 on the synthetic benchmark"),
        "min": 0})
    sinkhorn_iters: int = field(
        default=100, metadata={"help": "RADI-P: at most this many Sinkhorn iterations", "min": 1})
    sinkhorn_tol: float = field(default=1e-5, metadata={"help": "RADI-P: Sinkhorn stopping tolerance", "min": 0})
    mc_samples: int = field(default=10, metadata={
        "help": "T, MC-dropout passes of the teacher's last layer (RADI-P needs 2 to estimate a variance)", "min": 2})
    radi_l_alpha: float = field(default=1.0, metadata={"help": "RADI-L weight", "min": 0})
    hot: int = field(default=100, metadata={"help": "RADI-L hot list: the teacher's top-k (paper: 100)", "min": 1})
    cold: int = field(default=10, metadata={"help": "RADI-L cold list: sampled from the rest (paper: 10)", "min": 0})
    sampling: str = field(default="zipf", metadata={
        "help": "RADI-L's cold-list sampling (full: the whole remaining list)", "choices": SUBLIST_SAMPLINGS})
    sampling_alpha: float = field(
        default=1.0, metadata={"help": "smoothing coefficient of the Zipf / Exp sampling", "min": 0})
    list_loss: str = field(default="listnet", metadata={"help": "RADI-L's listwise loss", "choices": LISTWISE_LOSSES})
    stl_beta: float = field(default=1.0, metadata={"help": "STListNet noise scale", "min": 0})

Parts = Dict[str, torch.Tensor]


class Scheme:
    """One training objective. Subclasses override :meth:`extra`, and maybe :meth:`targets`."""

    name = "baseline"
    needs_teacher = False

    def __init__(self, cfg: SchemeConfig, spec: Optional[str] = None):
        self.cfg = cfg
        self.spec = spec or self.name

    @property
    def mc_samples(self) -> int:
        """How many MC-dropout passes of the teacher this scheme needs per batch (0: none)."""
        return 0

    # hooks for schemes with state (CTKD's temperature)
    def parameters(self) -> List[nn.Parameter]:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def start_epoch(self, epoch: int, epochs: int) -> None:
        pass

    def epoch_summary(self) -> Dict[str, float]:
        """Statistics of the epoch so far that the trainer logs and records (e.g. RADI-P's mean
        Sinkhorn iterations); empty for most schemes."""
        return {}

    def to(self, device) -> "Scheme":
        return self

    def targets(self, targets: torch.Tensor, teacher_logits: Optional[torch.Tensor]) -> torch.Tensor:
        return targets

    def extra(self, logits, targets, teacher_logits, teacher_mc, generator) -> Tuple[Optional[torch.Tensor], Parts]:
        return None, {}

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, teacher_logits: Optional[torch.Tensor] = None,
             teacher_mc: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None
             ) -> Tuple[torch.Tensor, Parts]:
        """``(total loss, {part name: detached value})`` for one batch; logits are cast to fp32."""
        logits = logits.float()
        if teacher_logits is not None:
            teacher_logits = teacher_logits.float()
        if teacher_mc is not None:
            teacher_mc = teacher_mc.float()
        cls = classification_loss(logits, self.targets(targets, teacher_logits))
        extra, parts = self.extra(logits, targets, teacher_logits, teacher_mc, generator)
        total = cls if extra is None else cls + extra
        return total, {"cls": cls.detach(), **parts}


class Baseline(Scheme):
    name = "baseline"


class LabelSmoothing(Scheme):
    name = "label_smoothing"

    def targets(self, targets, teacher_logits):
        q = targets / targets.sum(dim=1, keepdim=True)
        return (1 - self.cfg.ls_sigma) * q + self.cfg.ls_sigma / targets.shape[1]


class PseudoLabel(Scheme):
    """The labels plus the teacher's top-k answers, all weighted equally in eq. 2."""

    name = "pseudo_label"
    needs_teacher = True

    def targets(self, targets, teacher_logits):
        top = teacher_logits.topk(min(self.cfg.pl_topk, teacher_logits.shape[1]), dim=1).indices
        return targets.clamp(max=1).scatter(1, top, 1.0)


def kl_div_logits(teacher: torch.Tensor, student: torch.Tensor, tau) -> torch.Tensor:
    """``tau^2 KL(softmax(t/tau) || softmax(s/tau))``, batch mean (``tau`` a float or a tensor)."""
    lt, ls = F.log_softmax(teacher / tau, dim=1), F.log_softmax(student / tau, dim=1)
    return (lt.exp() * (lt - ls)).sum(dim=1).mean() * tau * tau


class KD(Scheme):
    name = "kd"
    needs_teacher = True

    def extra(self, logits, targets, teacher_logits, teacher_mc, generator):
        kd = kl_div_logits(teacher_logits, logits, self.cfg.kd_tau)
        return self.cfg.kd_alpha * kd, {"kd": kd.detach()}


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Row sums of ``p (log p - log q)`` with 0 log 0 = 0 (entries at -inf in p contribute 0)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=1)


class DKD(Scheme):
    """Decoupled KD with the labelled set merged into one target (see the module docstring)."""

    name = "dkd"
    needs_teacher = True

    def extra(self, logits, targets, teacher_logits, teacher_mc, generator):
        tau, is_t = self.cfg.dkd_tau, targets > 0

        def binary_and_rest(z):
            lp = F.log_softmax(z / tau, dim=1)
            neg = torch.finfo(lp.dtype).min
            log_t = lp.masked_fill(~is_t, neg).logsumexp(dim=1)
            log_r = lp.masked_fill(is_t, neg).logsumexp(dim=1)
            rest = F.log_softmax((z / tau).masked_fill(is_t, float("-inf")), dim=1)
            return torch.stack([log_t, log_r], dim=1), rest

        bt, rt = binary_and_rest(teacher_logits)
        bs, rs = binary_and_rest(logits)
        tckd = _kl_terms(bt, bs).mean() * tau * tau
        nckd = _kl_terms(rt, rs.masked_fill(is_t, 0.0)).mean() * tau * tau
        loss = self.cfg.dkd_alpha * tckd + self.cfg.dkd_beta * nckd
        return loss, {"tckd": tckd.detach(), "nckd": nckd.detach()}


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


class CTKD(Scheme):
    """KD whose global temperature is learned adversarially (it *maximises* the KD loss through a
    gradient-reversal layer) with a reversal strength ``lambda`` that rises from 0 to
    ``ctkd_lambda_max`` on a cosine curriculum, as in CTKD's global-temperature variant."""

    name = "ctkd"
    needs_teacher = True

    def __init__(self, cfg, spec=None):
        super().__init__(cfg, spec)
        self.theta = nn.Parameter(torch.zeros(1))
        self.lam = 0.0

    def parameters(self):
        return [self.theta]

    def state_dict(self):
        return {"theta": self.theta.detach().clone(), "lam": self.lam}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.theta.copy_(state["theta"])
        self.lam = state["lam"]

    def to(self, device):
        self.theta = nn.Parameter(self.theta.detach().to(device))
        return self

    def start_epoch(self, epoch, epochs):
        n = self.cfg.ctkd_curriculum_epochs or epochs
        self.lam = self.cfg.ctkd_lambda_max * (1 - math.cos(math.pi * min(epoch / max(n, 1), 1.0))) / 2

    def temperature(self) -> torch.Tensor:
        theta = _GradReverse.apply(self.theta, self.lam)
        return self.cfg.ctkd_tau_min + self.cfg.ctkd_tau_range * torch.sigmoid(theta)

    def extra(self, logits, targets, teacher_logits, teacher_mc, generator):
        tau = self.temperature()
        kd = kl_div_logits(teacher_logits, logits, tau).squeeze()
        return self.cfg.ctkd_alpha * kd, {"kd": kd.detach(), "tau": tau.detach().squeeze()}


class RadiP(Scheme):
    name = "radi_p"
    needs_teacher = True

    @property
    def mc_samples(self):
        return self.cfg.mc_samples

    def __init__(self, cfg: SchemeConfig, spec: Optional[str] = None):
        super().__init__(cfg, spec)
        # Sinkhorn iterations summed over the epoch's samples (a float, or a float64 tensor on the
        # loss's device: read once per epoch, never per step, which would sync the GPU), samples
        self.iterations = [0.0, 0]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.iterations = [0.0, 0]

    def epoch_summary(self) -> Dict[str, float]:
        total, samples = self.iterations
        return {"sinkhorn_iterations": float(total) / samples} if samples and self.cfg.margin_mode == "ot" else {}

    def state_dict(self) -> dict:
        return {"iterations": [float(self.iterations[0]), self.iterations[1]]}

    def load_state_dict(self, state: dict) -> None:
        self.iterations = list(state.get("iterations", [0.0, 0]))

    def extra(self, logits, targets, teacher_logits, teacher_mc, generator):
        c = self.cfg
        if c.lam == "auto" and c.lam_scale != 1 and c.margin_mode == "ot":
            rank, info = self._scaled_auto_lam(logits, teacher_mc, teacher_logits)
        else:
            lam = c.lam if c.lam == "auto" else float(c.lam) * c.lam_scale
            rank, info = radi_pairwise_loss(logits, teacher_mc, teacher_logits, margin=c.margin,
                                            margin_mode=c.margin_mode, lam=lam, top_k=c.top_k or DEFAULT_TOP_K,
                                            max_iter=c.sinkhorn_iters, tol=c.sinkhorn_tol, generator=generator,
                                            sinkhorn=c.sinkhorn, return_info=True)
        iterations = info.iterations.double()
        self.iterations = [self.iterations[0] + iterations.sum(), self.iterations[1] + iterations.numel()]
        return c.radi_p_alpha * rank, {"rank": rank.detach(), "sinkhorn_iterations": iterations.mean()}

    def _scaled_auto_lam(self, logits, teacher_mc, teacher_logits):
        """``lam = lam_scale x`` each sample's auto value (its mean off-diagonal U over its top-k
        answers, computed as the loss computes it), in one batched call although a call takes one
        float ``lam``: U enters W only as ``U / lam``, and scaling a sample's MC deviations from
        their mean by ``c_b`` scales its U by ``c_b^2``, so ``c_b = (lam_scale x auto_b)^-1/2``
        with ``lam = 1`` gives every sample its own ``lam_b`` (the teacher's ranking is passed
        unchanged, the MC passes enter nothing else in the "ot" mode)."""
        from .ops.pairwise_cpu import prepare_pairwise
        c, top_k = self.cfg, self.cfg.top_k or DEFAULT_TOP_K
        with torch.no_grad():
            mc = teacher_mc.detach()
            if teacher_logits is None:
                teacher_logits = mc.mean(dim=1)
            auto = prepare_pairwise(mc, teacher_logits, top_k, None, None).lam  # [B], the "auto" lam
            mean = mc.mean(dim=1, keepdim=True)
            mc = mean + (c.lam_scale * auto).rsqrt().to(mc.dtype)[:, None, None] * (mc - mean)
        return radi_pairwise_loss(logits, mc, teacher_logits, margin=c.margin, margin_mode="ot", lam=1.0,
                                  top_k=top_k, max_iter=c.sinkhorn_iters, tol=c.sinkhorn_tol, sinkhorn=c.sinkhorn,
                                  return_info=True)


class RadiL(Scheme):
    name = "radi_l"
    needs_teacher = True

    def extra(self, logits, targets, teacher_logits, teacher_mc, generator):
        c = self.cfg
        n = logits.shape[1]
        hot = min(c.hot, n - 1)
        rank = radi_listwise_loss(logits, teacher_logits, hot=hot, cold=min(c.cold, n - hot),
                                  sampling=c.sampling, alpha=c.sampling_alpha, loss=c.list_loss, beta=c.stl_beta,
                                  generator=generator)
        return c.radi_l_alpha * rank, {"rank": rank.detach()}


class _PlusKD:
    """Adds vanilla KD (weight ``kd_alpha``) to a ranking scheme's extra term (a mixin before it)."""

    def extra(self, logits, targets, teacher_logits, teacher_mc, generator):
        rank, parts = super().extra(logits, targets, teacher_logits, teacher_mc, generator)
        kd, kd_parts = KD.extra(self, logits, targets, teacher_logits, teacher_mc, generator)
        return kd + rank, {**kd_parts, **parts}


class KDRadiP(_PlusKD, RadiP):
    """Vanilla KD plus RADI-P, each with its own weight (``kd_alpha``, ``radi_p_alpha``) and settings."""

    name = "kd_radi_p"


class KDRadiL(_PlusKD, RadiL):
    """Vanilla KD plus RADI-L, each with its own weight (``kd_alpha``, ``radi_l_alpha``) and settings."""

    name = "kd_radi_l"


SCHEMES = {s.name: s for s in (Baseline, LabelSmoothing, PseudoLabel, KD, DKD, CTKD, RadiP, RadiL, KDRadiP, KDRadiL)}
DEFAULT_SCHEMES = ("baseline", "kd", "radi_p", "radi_l")


def _coerce(value: str, like):
    if isinstance(like, bool):
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    return value


def build_scheme(spec: str, cfg: SchemeConfig = SchemeConfig()) -> Scheme:
    """A scheme from a spec ``name[:key=value[:key=value...]]``.

    Keys are :class:`SchemeConfig` fields; ``alpha`` is short for the scheme's own weight
    (``kd_alpha``, ``radi_p_alpha``, ...). Example: ``radi_l:sampling=exp:alpha=10``. Raises
    ``ValueError`` for an unknown scheme or key, and for a value outside its field's rule (the
    field's ``choices`` or range, e.g. ``margin_mode`` one of ``MARGIN_MODES``, ``margin >= 0``).
    """
    name, *overrides = spec.strip().split(":")
    if name not in SCHEMES:
        raise ValueError(f"unknown scheme {name!r} in {spec!r}; expected one of {', '.join(SCHEMES)}")
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    changes = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if key == "alpha" and f"{name}_alpha" in fields:
            key = f"{name}_alpha"
        if not sep or key not in fields:
            raise ValueError(f"bad override {item!r} in scheme {spec!r}: expected key=value with key in "
                             f"SchemeConfig ({', '.join(fields)})")
        try:
            changes[key] = _coerce(value, fields[key])
        except ValueError as e:
            raise ValueError(f"bad value for {key} in scheme {spec!r}: {e}") from None
    resolved = dataclasses.replace(cfg, **changes)
    # every value (an override's, or the flags') within its rule (SchemeConfig's metadata)
    check_fields(resolved, where="scheme " + repr(spec.strip()).replace("{", "{{").replace("}", "}}") + ": {name}")
    return SCHEMES[name](resolved, spec.strip())
