"""Video-QA models for the RADI trainer, and the interface a user's own model implements.

RADI-P needs T Monte-Carlo-dropout passes of the teacher's *last layer* (sec. 3.2: "we only
activate the dropout at the last layer, which implies the repetitive execution is only confined to
the last layer"). The interface therefore splits a model in two:

* ``encode(batch)``: everything but the last layer, run once; returns a tuple of tensors whose
  first dimension is the batch (e.g. hidden states and their padding mask);
* ``decode(hidden)``: the last layer and the answer scoring, ``-> logits [B, N]``; the only part
  whose dropout is active under MC dropout.

:class:`RadiModel` builds ``forward``, ``mc_logits`` and ``teacher_outputs`` on these two. To plug
in your own model (e.g. a FrozenBiLM-style frozen LM with adapters: ``encode`` runs the LM up to
its last block, ``decode`` the last block with its adapter and the MLM head over the answer
embeddings), subclass it and implement the two methods, plus ``last_layer_modules`` if the last
layer is not ``self.last_layer``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

Batch = Dict[str, torch.Tensor]


class RadiModel(nn.Module, ABC):
    """A video-QA model whose last layer can be run T times cheaply with MC dropout."""

    n_answers: int

    @abstractmethod
    def encode(self, batch: Batch) -> Tuple[torch.Tensor, ...]:
        """All layers but the last: a tuple of tensors, each with the batch as first dimension."""

    @abstractmethod
    def decode(self, hidden: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The last layer and the answer scoring: ``hidden -> logits [B, n_answers]``."""

    def last_layer_modules(self) -> List[nn.Module]:
        """The modules whose dropout stays active under MC dropout (default: ``self.last_layer``)."""
        return [self.last_layer]

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.decode(self.encode(batch))

    def teacher_outputs(self, batch: Batch, T: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, N], mc_logits [B, T, N])`` sharing one ``encode``.

        ``logits`` is the deterministic prediction (no dropout anywhere); ``mc_logits`` runs the last
        layer ``T`` times with its dropout active and every other dropout off. The training mode of
        the model is restored afterwards. Call it under ``torch.no_grad()`` for a frozen teacher.
        """
        was_training = [m.training for m in self.modules()]
        try:
            self.eval()
            hidden = self.encode(batch)
            logits = self.decode(hidden)
            if T <= 0:
                return logits, logits.new_zeros(logits.shape[0], 0, logits.shape[1])
            for m in self.last_layer_modules():
                m.train()
            b = logits.shape[0]
            mc = self.decode(tuple(h.repeat_interleave(T, dim=0) for h in hidden))
            return logits, mc.view(b, T, -1)
        finally:
            for m, t in zip(self.modules(), was_training):
                m.training = t

    def mc_logits(self, batch: Batch, T: int) -> torch.Tensor:
        """``[B, T, N]``: T MC-dropout passes of the last layer only (see :meth:`teacher_outputs`)."""
        return self.teacher_outputs(batch, T)[1]


@dataclass
class ModelConfig:
    """The model: the size of the default :class:`VideoQATransformer`, or your own model's factory
    (``model``). Every field but ``max_frames`` is a trainer flag."""

    model: str = field(default="", metadata={"help": (
        "your own model instead of the default one: package.module:factory or path/to/file.py:factory, "
        "called as factory(data, cfg) -> a RadiModel (docs/training.md, \"Plugging in your own model and data\")")})
    d_model: int = field(default=64, metadata={"help": "width of the transformer", "min": 1})
    n_layers: int = field(default=3, metadata={
        "help": "transformer layers, the last one (the MC-dropout layer) included", "min": 1})
    n_heads: int = field(default=4, metadata={"help": "attention heads (d_model must divide by it)", "min": 1})
    dropout: float = field(default=0.1, metadata={
        "help": "as FrozenBiLM's adapters; MC dropout reuses it in the last layer", "min": 0, "lt": 1})
    max_question_len: int = field(
        default=20, metadata={"help": "question tokens kept (longer questions are truncated)", "min": 1})
    max_frames: int = field(
        default=10, metadata={"help": "frames per video (the trainer sets it from --num_frames)", "min": 1})


class LastLayer(nn.Module):
    """The final transformer block, computed for the answer ([MASK]) token only.

    Pre-norm attention from the answer token to every token, then a pre-norm MLP, with dropout
    0.1 on both residual branches. Only this block and the answer scoring repeat under MC
    dropout, so T passes cost T times one token's block, not the whole model.
    """

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)
        self.drop1 = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * d, d))
        self.drop2 = nn.Dropout(dropout)
        self.ln_out = nn.LayerNorm(d)

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = self.ln1(h)
        q = x[:, :1]
        a, _ = self.attn(q, x, x, key_padding_mask=pad, need_weights=False)
        y = h[:, 0] + self.drop1(a[:, 0])
        y = y + self.drop2(self.mlp(self.ln2(y)))
        return self.ln_out(y)


class VideoQATransformer(RadiModel):
    """A small FrozenBiLM-like model: [MASK] + frame features + question tokens -> transformer.

    The output of the [MASK] token is scored against answer embeddings, as FrozenBiLM scores its
    masked-LM output against the answer vocabulary. Answer embeddings are a learned table, plus a
    learned projection of fixed answer-text features when given (the stand-in for a language
    model's embeddings of the answer words: synonyms start near each other).
    """

    def __init__(self, n_answers: int, feat_dim: int, question_vocab_size: int, cfg: ModelConfig = ModelConfig(),
                 answer_features: Optional[torch.Tensor] = None):
        super().__init__()
        d = cfg.d_model
        if d % cfg.n_heads:
            raise ValueError(f"d_model={d} must be divisible by n_heads={cfg.n_heads}")
        if cfg.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {cfg.n_layers}")
        self.n_answers, self.cfg = n_answers, cfg
        self.video_proj = nn.Sequential(nn.LayerNorm(feat_dim), nn.Linear(feat_dim, d))
        self.token_emb = nn.Embedding(question_vocab_size, d, padding_idx=0)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.frame_pos = nn.Parameter(torch.zeros(1, cfg.max_frames, d))
        self.token_pos = nn.Parameter(torch.zeros(1, cfg.max_question_len, d))
        self.type_emb = nn.Parameter(torch.zeros(3, d))  # [MASK] / video / question segment
        self.drop = nn.Dropout(cfg.dropout)
        self.body = nn.ModuleList([
            nn.TransformerEncoderLayer(d, cfg.n_heads, 4 * d, cfg.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(cfg.n_layers - 1)
        ]) if cfg.n_layers > 1 else nn.ModuleList()
        self.last_layer = LastLayer(d, cfg.n_heads, cfg.dropout)
        self.answer_emb = nn.Parameter(torch.empty(n_answers, d))
        self.answer_bias = nn.Parameter(torch.zeros(n_answers))
        if answer_features is not None:
            if answer_features.shape[0] != n_answers:
                raise ValueError(f"answer_features has {answer_features.shape[0]} rows, expected {n_answers}")
            self.register_buffer("answer_features", answer_features.float().clone(), persistent=True)
            self.answer_text_proj = nn.Linear(answer_features.shape[1], d, bias=False)
        else:
            self.answer_features, self.answer_text_proj = None, None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.mask_token, self.frame_pos, self.token_pos, self.type_emb):
            nn.init.normal_(p, std=0.02)
        nn.init.normal_(self.answer_emb, std=0.02 if self.answer_features is not None else 1 / math.sqrt(self.cfg.d_model))

    def answer_embeddings(self) -> torch.Tensor:
        e = self.answer_emb
        if self.answer_text_proj is not None:
            e = e + self.answer_text_proj(self.answer_features)
        return e

    def encode(self, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        video, vmask = batch["video"], batch["video_mask"]
        q, qmask = batch["question"], batch["question_mask"]
        b, f = video.shape[:2]
        if f > self.cfg.max_frames or q.shape[1] > self.cfg.max_question_len:
            raise ValueError(f"batch has {f} frames and {q.shape[1]} question tokens; the model takes at most "
                             f"{self.cfg.max_frames} and {self.cfg.max_question_len}")
        x_mask = self.mask_token.expand(b, 1, -1) + self.type_emb[0]
        x_vid = self.video_proj(video) + self.frame_pos[:, :f] + self.type_emb[1]
        x_q = self.token_emb(q) + self.token_pos[:, : q.shape[1]] + self.type_emb[2]
        h = self.drop(torch.cat([x_mask, x_vid, x_q], dim=1))
        keep = torch.cat([vmask.new_ones(b, 1), vmask, qmask], dim=1)
        pad = ~keep
        for layer in self.body:
            h = layer(h, src_key_padding_mask=pad)
        return h, pad

    def decode(self, hidden: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        h, pad = hidden
        out = self.last_layer(h, pad)
        return out @ self.answer_embeddings().to(out.dtype).t() + self.answer_bias.to(out.dtype)


def build_model(data, cfg: ModelConfig) -> VideoQATransformer:
    """The default model for a :class:`radi_fast.data.VideoQAData`."""
    return VideoQATransformer(data.n_answers, data.feat_dim, len(data.question_vocab), cfg, data.answer_features)
