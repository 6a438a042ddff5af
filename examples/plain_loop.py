"""RADI-P / RADI-L in a plain PyTorch training loop: the smallest complete recipe.

A student and a frozen teacher answer N-way "questions" (random features here; in practice your
stage-1 model is the teacher). The teacher's MC-dropout passes on its last layer feed RADI-P;
its mean logits feed RADI-L. Each row may have its own set of valid answers (``mask``).

    python examples/plain_loop.py --loss radi_p --steps 50
    python examples/plain_loop.py --loss radi_l --bf16       # CPU autocast, where supported

Runs on a CPU in seconds, downloads nothing.
"""
from __future__ import annotations

import argparse
from typing import List

import torch
from torch import nn
from torch.nn import functional as F

import radi_fast


class AnswerHead(nn.Module):
    """Features -> [B, N] answer logits, with dropout before the last layer (the layer whose
    MC-dropout passes RADI-P reads, as in the paper)."""

    def __init__(self, dim: int, n_answers: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.dropout = dropout
        self.last = nn.Linear(hidden, n_answers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.dropout(self.body(x), self.dropout, self.training))

    @torch.no_grad()
    def mc_logits(self, x: torch.Tensor, passes: int = 8) -> torch.Tensor:
        """[B, T, N]: T passes of the last layer with dropout on (the body runs once)."""
        h = self.body(x)
        return torch.stack([self.last(F.dropout(h, self.dropout, True)) for _ in range(passes)], dim=1)


def make_batch(g: torch.Generator, batch: int, dim: int, n_answers: int, planted: torch.Tensor):
    """Random features, 1-3 correct answers per row from a planted linear map, and a mask of
    valid answers (each row may offer a different answer set)."""
    x = torch.randn(batch, dim, generator=g)
    scores = x @ planted
    mask = torch.rand(batch, n_answers, generator=g) < 0.9
    top = scores.masked_fill(~mask, float("-inf")).topk(3, dim=1).indices
    n_correct = torch.randint(1, 4, (batch, 1), generator=g)
    targets = torch.zeros(batch, n_answers)
    targets.scatter_(1, top, (torch.arange(3)[None, :] < n_correct).float())
    return x, targets, mask


def main(steps: int = 30, loss: str = "radi_p", alpha: float = 1.0, bf16: bool = False, batch: int = 16,
         n_answers: int = 120, dim: int = 32, seed: int = 0) -> List[float]:
    """Train the student for ``steps`` steps; returns the total loss of each step."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    planted = torch.randn(dim, n_answers, generator=g)
    student, teacher = AnswerHead(dim, n_answers), AnswerHead(dim, n_answers)
    teacher.eval().requires_grad_(False)  # frozen (stage 1 would have trained it)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    history = []
    for _ in range(steps):
        x, targets, mask = make_batch(g, batch, dim, n_answers, planted)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = student(x)                                                      # [B, N]
            # --- the drop-in: eq. 2 + alpha * RADI-P (or RADI-L), masked answers ignored
            total = radi_fast.classification_loss(logits, targets, mask=mask)
            if loss == "radi_p":
                total = total + alpha * radi_fast.radi_pairwise_loss(logits, teacher.mc_logits(x), mask=mask)
            else:
                total = total + alpha * radi_fast.radi_listwise_loss(logits, teacher(x), hot=20, cold=10, mask=mask)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        history.append(float(total.detach()))
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--loss", choices=("radi_p", "radi_l"), default="radi_p")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--bf16", action="store_true", help="CPU autocast in bf16")
    args = parser.parse_args()
    losses = main(args.steps, args.loss, args.alpha, args.bf16)
    print(f"{args.loss}: loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")
