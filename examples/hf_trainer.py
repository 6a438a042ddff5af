"""RADI-P / RADI-L inside a Hugging Face ``transformers.Trainer``: override ``compute_loss``.

The student and the frozen teacher are tiny, randomly initialised BERT classifiers over N
answers (no download; in practice the teacher is your stage-1 model). ``compute_loss`` adds
``alpha * RADI-P`` on the teacher's MC-dropout passes of its classifier layer (or RADI-L on its
logits) to the classification loss; a per-example ``answer_mask`` marks the valid answers.

    pip install -e ".[examples]"
    python examples/hf_trainer.py --loss radi_p --steps 20
    python examples/hf_trainer.py --loss radi_l --bf16          # CPU autocast, where supported

Runs on a CPU in seconds.
"""
from __future__ import annotations

import argparse
import tempfile
from typing import List

import torch
from torch.nn import functional as F
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

import radi_fast

VOCAB, SEQ, N_ANSWERS = 200, 12, 64


def tiny_bert(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=SEQ, num_labels=N_ANSWERS,
                        hidden_dropout_prob=0.1, classifier_dropout=0.1)
    return BertForSequenceClassification(config)


@torch.no_grad()
def teacher_mc_logits(teacher: BertForSequenceClassification, inputs: dict, passes: int = 8) -> torch.Tensor:
    """[B, T, N]: the encoder once (eval mode), then T passes of dropout + the classifier layer."""
    pooled = teacher.bert(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output
    p = teacher.config.classifier_dropout
    return torch.stack([teacher.classifier(F.dropout(pooled, p, True)) for _ in range(passes)], dim=1)


class QADataset(torch.utils.data.Dataset):
    """Random token sequences; 1-3 correct answers (multi-hot labels) from a planted map of the
    first token; ~90% of the answers valid per example."""

    def __init__(self, size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, VOCAB, (size, SEQ), generator=g)
        self.answer_mask = torch.rand(size, N_ANSWERS, generator=g) < 0.9
        answer_of_token = torch.randint(0, N_ANSWERS, (VOCAB, 3), generator=g)
        self.labels = torch.zeros(size, N_ANSWERS)
        for i in range(size):
            for a in answer_of_token[self.input_ids[i, 0]][: 1 + i % 3].tolist():
                self.answer_mask[i, a] = True
                self.labels[i, a] = 1.0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.input_ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "labels": self.labels[i], "answer_mask": self.answer_mask[i]}


class RadiTrainer(Trainer):
    """A ``Trainer`` whose loss is ``L_cls + alpha * RADI`` against a frozen teacher."""

    def __init__(self, *args, teacher, rank_loss: str = "radi_p", alpha: float = 1.0, mc_passes: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.rank_loss, self.alpha, self.mc_passes = rank_loss, alpha, mc_passes

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels, mask = inputs.pop("labels"), inputs.pop("answer_mask")
        outputs = model(**inputs)
        logits = outputs.logits                                                       # [B, N]
        loss = radi_fast.classification_loss(logits, labels, mask=mask)               # eq. 2
        self.teacher.to(logits.device)
        if self.rank_loss == "radi_p":
            mc = teacher_mc_logits(self.teacher, inputs, self.mc_passes)              # [B, T, N]
            loss = loss + self.alpha * radi_fast.radi_pairwise_loss(logits, mc, mask=mask)
        else:
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits
            loss = loss + self.alpha * radi_fast.radi_listwise_loss(logits, teacher_logits, hot=20, cold=10,
                                                                    mask=mask)
        return (loss, outputs) if return_outputs else loss


class LossHistory(TrainerCallback):
    def __init__(self):
        self.losses: List[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def main(steps: int = 10, loss: str = "radi_p", alpha: float = 1.0, bf16: bool = False, seed: int = 0) -> List[float]:
    """Train for ``steps`` steps; returns the logged loss of every step."""
    student, teacher = tiny_bert(seed), tiny_bert(seed + 1)
    history = LossHistory()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=16, learning_rate=1e-3,
                                 logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=bf16,
                                 remove_unused_columns=False,  # keep "answer_mask" for compute_loss
                                 disable_tqdm=True, seed=seed, dataloader_num_workers=0)
        trainer = RadiTrainer(model=student, args=args, train_dataset=QADataset(16 * steps, seed),
                              teacher=teacher, rank_loss=loss, alpha=alpha, callbacks=[history])
        trainer.train()
    return history.losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--loss", choices=("radi_p", "radi_l"), default="radi_p")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with bf16 support)")
    a = parser.parse_args()
    losses = main(a.steps, a.loss, a.alpha, a.bf16)
    print(f"{a.loss}: loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")
