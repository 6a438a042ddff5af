"""The autograd of the RADI-P ops: the forward pass returns each sample's loss, its gradient
w.r.t. the student (the teacher is constant) and the Sinkhorn iterations, so the backward pass
only scales that gradient. Also :func:`no_autocast`, which every op body runs under."""
from __future__ import annotations

import torch

from .teacher import compute_dtype


def fake_outputs(student_logits, teacher_mc_logits, teacher_logits):
    """The ops' outputs as shapes and dtypes only: (loss [B], grad [B, N], iterations [B] int64)."""
    dtype = compute_dtype(teacher_mc_logits, teacher_logits)
    B, N = student_logits.shape
    return (student_logits.new_empty((B,), dtype=dtype), student_logits.new_empty((B, N), dtype=dtype),
            student_logits.new_empty((B,), dtype=torch.int64))


def _setup_context(ctx, inputs, output):
    _, grad, iterations = output
    ctx.save_for_backward(grad)
    ctx.student_dtype = inputs[0].dtype
    ctx.n_inputs = len(inputs)
    ctx.mark_non_differentiable(grad, iterations)


def _backward(ctx, grad_loss, *_unused):
    (grad,) = ctx.saved_tensors
    d_student = (grad * grad_loss[:, None].to(grad.dtype)).to(ctx.student_dtype)
    return (d_student,) + (None,) * (ctx.n_inputs - 1)


def register_precomputed_gradient(op) -> None:
    """For a ``torch.library.custom_op`` whose first input is the student's logits [B, N] and
    whose outputs are ``(loss [B], grad [B, N], iterations [B])``: gradient to the student only."""
    op.register_autograd(_backward, setup_context=_setup_context)


def no_autocast(t):
    """A context that switches autocast off on ``t``'s device: the ops choose their own compute
    dtype (fp32, or fp64 for fp64 inputs) and must not see matmuls recast to bf16/fp16 by an
    enclosing ``torch.autocast`` (autocast reaches into custom ops' implementations)."""
    return torch.autocast(t.device.type, enabled=False)
