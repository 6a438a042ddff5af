"""The autograd of the RADI-P ops: the forward pass returns each sample's loss, its gradient
w.r.t. the student (the teacher is constant) and the Sinkhorn iterations, so the backward pass
only scales that gradient. Also :func:`no_autocast`, which every op body runs under, and
:func:`precomputed_gradient_call`, the entry point that skips the custom op's dispatch in plain
eager mode (docs/triton.md, "Host work of one call")."""
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


def plain_eager(*tensors) -> bool:
    """Whether a call may run its op's body directly: not under ``torch.compile``, no
    ``TorchDispatchMode`` (fake tensors, ``make_fx``, FlopCounter), no ``torch.func`` transform,
    and only plain tensors (no subclasses). Anywhere else the custom op, which those understand."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    return all(t is None or type(t) is torch.Tensor for t in tensors)


def precomputed_gradient_call(op, body, name: str):
    """Registers the precomputed-gradient autograd on ``op`` (a ``torch.library.custom_op`` of
    ``body``, see :func:`register_precomputed_gradient`) and returns ``call(*args)``: in plain eager
    mode (:func:`plain_eager` of the first four arguments, the tensors) an
    ``torch.autograd.Function`` named ``name`` running the same ``body`` with the same context
    and backward, else ``op``. Same outputs and gradients bit for bit; the custom op's Python
    dispatch (schema defaults, redispatch, its own autograd.Function) cost ~0.1 ms of host time per
    call, as much as a dozen CUDA launches."""
    register_precomputed_gradient(op)

    def forward(ctx, *args):
        # forward(ctx, ...) rather than a separate setup_context: with the latter, every apply
        # binds the arguments through inspect.signature (~20 us); torch.func transforms, which
        # need the separate form, take the op (plain_eager)
        output = body(*args)
        _setup_context(ctx, args, output)
        return output

    function = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(_backward), "__module__": __name__,
        "__doc__": f"The eager form of ``{op}``: same body, context and backward."})

    def call(*args):
        if plain_eager(*args[:4]):
            return function.apply(*args)
        return op(*args)

    call.function, call.op = function, op
    return call


def no_autocast(t):
    """A context that switches autocast off on ``t``'s device: the ops choose their own compute
    dtype (fp32, or fp64 for fp64 inputs) and must not see matmuls recast to bf16/fp16 by an
    enclosing ``torch.autocast`` (autocast reaches into custom ops' implementations)."""
    return torch.autocast(t.device.type, enabled=False)
