"""RADI-P / RADI-L in a Lightning ``LightningModule``: the loss in ``training_step``.

A small student and a frozen teacher (randomly initialised, no download; in practice the
teacher is your stage-1 model) answer N-way questions from token sequences. ``training_step``
adds ``alpha * RADI-P`` on the teacher's MC-dropout passes of its last layer (or RADI-L on its
logits) to the classification loss; a per-example mask marks the valid answers. Precision
``bf16-mixed`` where the CPU supports bf16 (else ``32-true``): the losses return fp32 under it.

    pip install -e ".[examples]"
    python examples/lightning_module.py --loss radi_l --steps 20

Runs on a CPU in seconds.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

import radi_fast

VOCAB, SEQ, N_ANSWERS = 200, 12, 64


class QAModel(nn.Module):
    """Token ids [B, S] -> answer logits [B, N]: embeddings, one transformer layer, mean pooling,
    then dropout + the answer layer (whose MC-dropout passes RADI-P reads)."""

    def __init__(self, dim: int = 32, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.encoder = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=64, dropout=dropout,
                                                  batch_first=True)
        self.dropout = dropout
        self.answers = nn.Linear(dim, N_ANSWERS)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(tokens)).mean(dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.answers(F.dropout(self.features(tokens), self.dropout, self.training))

    @torch.no_grad()
    def mc_logits(self, tokens: torch.Tensor, passes: int = 8) -> torch.Tensor:
        """[B, T, N]: the encoder once, T passes of dropout + the answer layer."""
        h = self.features(tokens)
        return torch.stack([self.answers(F.dropout(h, self.dropout, True)) for _ in range(passes)], dim=1)


def qa_dataset(size: int, seed: int = 0) -> torch.utils.data.TensorDataset:
    """Random token sequences, 1-3 correct answers from a planted map of the first token,
    ~90% of the answers valid per example."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (size, SEQ), generator=g)
    answer_of_token = torch.randint(0, N_ANSWERS, (VOCAB, 3), generator=g)
    mask = torch.rand(size, N_ANSWERS, generator=g) < 0.9
    targets = torch.zeros(size, N_ANSWERS)
    n_correct = torch.arange(size) % 3 + 1
    for j in range(3):
        rows = n_correct > j
        answers = answer_of_token[tokens[:, 0], j]
        targets[rows, answers[rows]] = 1.0
        mask[rows, answers[rows]] = True
    return torch.utils.data.TensorDataset(tokens, targets, mask)


class RadiDistillation(L.LightningModule):
    """Stage 2 of RADI: the student learns ``L_cls + alpha * RADI`` from a frozen teacher."""

    def __init__(self, teacher: nn.Module, rank_loss: str = "radi_p", alpha: float = 1.0, lr: float = 1e-3,
                 mc_passes: int = 8):
        super().__init__()
        self.student = QAModel()
        self.teacher = teacher.eval().requires_grad_(False)
        self.rank_loss, self.alpha, self.lr, self.mc_passes = rank_loss, alpha, lr, mc_passes
        self.losses: List[float] = []

    def training_step(self, batch, batch_idx):
        tokens, targets, mask = batch
        logits = self.student(tokens)                                               # [B, N]
        loss = radi_fast.classification_loss(logits, targets, mask=mask)            # eq. 2
        if self.rank_loss == "radi_p":
            mc = self.teacher.mc_logits(tokens, self.mc_passes)                     # [B, T, N]
            rank = radi_fast.radi_pairwise_loss(logits, mc, mask=mask)
        else:
            with torch.no_grad():
                teacher_logits = self.teacher(tokens)
            rank = radi_fast.radi_listwise_loss(logits, teacher_logits, hot=20, cold=10, mask=mask)
        loss = loss + self.alpha * rank
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.student.parameters(), lr=self.lr)

    def on_train_start(self):
        # the frozen teacher stays in eval mode (Lightning notes "modules in eval mode": intended)
        self.teacher.eval()


def cpu_supports_bf16() -> bool:
    """bf16 autocast is worth using on this CPU (native bf16 instructions)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def main(steps: int = 10, loss: str = "radi_p", alpha: float = 1.0, precision: Optional[str] = None,
         seed: int = 0) -> List[float]:
    """Train for ``steps`` steps; returns the loss of every step."""
    L.seed_everything(seed, verbose=False)
    teacher = QAModel()
    module = RadiDistillation(teacher, loss, alpha)
    loader = torch.utils.data.DataLoader(qa_dataset(16 * steps, seed), batch_size=16, shuffle=True)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1,
                        precision=precision or ("bf16-mixed" if cpu_supports_bf16() else "32-true"),
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0)
    trainer.fit(module, loader)
    return module.losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--loss", choices=("radi_p", "radi_l"), default="radi_p")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--precision", default=None, help="Lightning precision (default: bf16-mixed if supported)")
    a = parser.parse_args()
    losses = main(a.steps, a.loss, a.alpha, a.precision)
    print(f"{a.loss}: loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")
