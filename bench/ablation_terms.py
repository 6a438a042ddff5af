"""Names the ablation grid (``ablations.py``) and its report (``ablations_report.py``) share:
the metrics, the question groups, the main teacher's epochs and the verdict of an interval.
A leaf module, so neither of the two imports the other for them."""
from __future__ import annotations

import math

METRICS = ("acc1", "hit5", "ndcg5")
METRIC_NAMES = {"acc1": "Acc@1", "hit5": "Hit@5", "ndcg5": "nDCG@5"}
# the teacher (and individual) epochs of the main grid: the trainer's default
MAIN_TEACHER_EPOCHS = 10

GROUPS = {
    "reference": "Reference schemes (no ablation)",
    "margin_modes": "Q1a. RADI-P margin modes (Table 3, upper part)",
    "margin_grid": "Q1b. RADI-P margin m and Sinkhorn lam (OT margins)",
    "sampling": "Q2a. RADI-L cold-list sampling (Table 3, lower part)",
    "hot_cold": "Q2b. RADI-L hot and cold list sizes",
    "list_loss": "Q2c. RADI-L list losses (Figure 4)",
    "combined": "Q3. KD + RADI combined objectives",
    "labels": "Q4a. Label scarcity: labels kept per training question",
    "teacher": "Q4b. Teacher quality: the teacher's training epochs",
}


def verdict(ci: dict, better: str = "better", worse: str = "worse") -> str:
    """``better`` when the interval lies above 0, ``worse`` below, ``tie`` when it contains 0."""
    lo, hi = ci["ci"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    return better if lo > 0 else worse if hi < 0 else "tie"
