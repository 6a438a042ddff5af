"""Scoring a model on a split: Acc@1, Hit@5 and nDCG@5 against the full answer sets.

Every sample is counted once across the ranks of a ``torchrun`` job: rank ``r`` scores positions
``r, r + world_size, ...`` (no padding) and the sums are all-reduced (docs/training.md,
"Distributed training").
"""
from __future__ import annotations

from typing import Dict

import torch
from torch.utils.data import Dataset

from . import distributed as D
from . import metrics
from .config import Config
from .data import make_loader
from .model import RadiModel

METRICS = ("acc1", "hit5", "ndcg5")
METRIC_NAMES = {"acc1": "Acc@1", "hit5": "Hit@5", "ndcg5": "nDCG@5", "ivqa_acc": "iVQA acc"}


def autocast(cfg: Config, device: torch.device):
    """The context of every forward pass, in training and evaluation: bf16 autocast under
    ``--precision bf16``, nothing under fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.run.precision == "bf16")


@torch.no_grad()
def evaluate(model: RadiModel, dataset: Dataset, n_answers: int, cfg: Config, device: torch.device) -> Dict[str, float]:
    """``{acc1, hit5, ndcg5, ivqa_acc}`` in percent over ``dataset``, every sample counted once
    across ranks. A row whose answers are all out of vocabulary counts as wrong. The model's
    training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    loader = make_loader(dataset, n_answers, sampler=list(range(D.rank(), len(dataset), D.world_size())),
                         batch_size=cfg.optim.eval_batch_size, num_workers=cfg.run.num_workers)
    sums = torch.zeros(5, dtype=torch.float64)  # acc1, hit5, ndcg5, ivqa_acc, rows
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(cfg, device):
            scores = model(batch)
        scores, counts = scores.float().cpu(), batch["answer_counts"].cpu()
        sums[4] += scores.shape[0]
        ok = (counts > 0).any(dim=1)  # a row whose answers are all out of vocabulary counts as wrong
        if ok.any():
            s, c = scores[ok], counts[ok]
            sums[:4] += torch.stack([metrics.acc_at_1(s, c > 0, reduction="none").sum(),
                                     metrics.hit_at_k(s, c > 0, k=5, reduction="none").sum(),
                                     metrics.ndcg_at_k(s, c > 0, k=5, reduction="none").sum(),
                                     metrics.ivqa_accuracy(s, c, reduction="none").sum()]).double()
    sums = D.all_reduce_sum(sums.to(device)).cpu()
    model.train(was_training)
    names = METRICS + ("ivqa_acc",)
    return {m: 100.0 * float(sums[i] / max(float(sums[4]), 1.0)) for i, m in enumerate(names)}


def fmt_metrics(m: Dict[str, float]) -> str:
    """``Acc@1 xx.xx  Hit@5 xx.xx  nDCG@5 xx.xx``, the log line's form."""
    return "  ".join(f"{METRIC_NAMES[k]} {m[k]:5.2f}" for k in METRICS)


def results_table(results: dict) -> str:
    """A Markdown table of the test metrics: reference rows, then the schemes with deltas vs. baseline."""
    head = "| scheme | " + " | ".join(METRIC_NAMES[m] for m in METRICS) + " | time (s) |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for name, r in results["stages"].items():
        lines.append(f"| {name} (stage 1) | " + " | ".join(f"{r['test'][m]:.2f}" for m in METRICS)
                     + f" | {r['seconds']:.0f} |")
    base = results["schemes"].get("baseline")
    for name, r in results["schemes"].items():
        cells = []
        for m in METRICS:
            v = r["test"][m]
            cells.append(f"{v:.2f}" if base is None or name == "baseline" else f"{v:.2f} ({v - base['test'][m]:+.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
    return "\n".join(lines)
