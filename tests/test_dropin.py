"""The losses as drop-ins for other trainers.

* ``torch.compile(fullgraph=True)`` of ``classification_loss``, ``radi_pairwise_loss`` and
  ``radi_listwise_loss`` (aot_eager and inductor, on the CPU; with and without a mask): no graph
  break, losses and gradients equal eager.
* The dtype table: fp32 out for fp16/bf16/fp32 inputs, fp64 for fp64, gradients in the student's
  dtype, also under CPU autocast (bf16), whose recasting never reaches inside the losses.
* ``import radi_fast`` registers the sampler ops.
* ``pytest bench/ --benchmark`` (the alias) collects and runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import radi_fast
from radi_fast._backend import triton_available
from radi_fast.ops import sampler

from conftest import make_mc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, T, N = 4, 5, 48


def inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, N, generator=g).to(dtype)
    mc = make_mc(B, T, N, seed=seed).to(dtype)
    targets = (torch.rand(B, N, generator=g) < 0.1).to(dtype)
    targets[:, 1] = 1
    mask = torch.rand(B, N, generator=g) < 0.8
    mask[:, 1] = True
    return student, mc, targets, mask


def losses(mc, targets, mask=None, pairwise_backend="torch"):
    teacher = mc.mean(1)
    return {
        "classification": lambda s: radi_fast.classification_loss(s, targets, mask=mask),
        "radi_p": lambda s: radi_fast.radi_pairwise_loss(s, mc, margin=2.0, max_iter=8, tol=0.0, mask=mask,
                                                         backend=pairwise_backend),
        "radi_l": lambda s: radi_fast.radi_listwise_loss(s, teacher, hot=6, cold=5, mask=mask),
    }


def loss_and_grad(fn, student, seed=123):
    s = student.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # RADI-L's cold draws (the global RNG: Dynamo cannot trace a Generator)
    out = fn(s)
    out.backward()
    return out.detach(), s.grad


# ----------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("masked", [False, True])
def test_compile_fullgraph_matches_eager(backend, masked):
    if backend == "inductor" and not masked:
        pytest.skip("one inductor run per loss keeps CI fast (the masked one traces more); aot_eager runs both")
    student, mc, targets, mask = inputs()
    for name, fn in losses(mc, targets, mask if masked else None).items():
        torch._dynamo.reset()
        compiled = torch.compile(fn, backend=backend, fullgraph=True)
        # inductor replaces aten's random ops by its own generator unless told not to: RADI-L's
        # (seed, offset) would come from another stream than eager's (a fact of torch.compile)
        with torch._inductor.config.patch(fallback_random=True):
            c_loss, c_grad = loss_and_grad(compiled, student)
        e_loss, e_grad = loss_and_grad(fn, student)
        assert c_loss.dtype == e_loss.dtype == torch.float32, name
        torch.testing.assert_close(c_loss, e_loss, rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(c_grad, e_grad, rtol=1e-6, atol=1e-7, msg=name)
    torch._dynamo.reset()


@pytest.mark.skipif(not triton_available(), reason="no triton")
def test_compile_fullgraph_triton_op():
    """The Triton RADI-P op is an opaque node too (here under the interpreter)."""
    student, mc, targets, mask = inputs()
    fn = losses(mc, targets, mask, pairwise_backend="triton")["radi_p"]
    torch._dynamo.reset()
    c_loss, c_grad = loss_and_grad(torch.compile(fn, backend="aot_eager", fullgraph=True), student)
    e_loss, e_grad = loss_and_grad(fn, student)
    assert torch.equal(c_loss, e_loss) and torch.equal(c_grad, e_grad)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- dtypes
PAIRWISE_BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not triton_available(),
                                                                               reason="no triton"))]


# ----------------------------------------------------------------------------- eager path
def pairwise_module(backend):
    if backend == "triton":
        from radi_fast.ops import pairwise_triton as module
    else:
        from radi_fast.ops import pairwise_cpu as module
    return module


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("pairwise_backend", PAIRWISE_BACKENDS)
@pytest.mark.parametrize("mode,dtype,masked", [("ot", torch.float32, False), ("ot", torch.bfloat16, True),
                                               ("uniform", torch.float64, True), ("random", torch.float32, False),
                                               ("uncertainty", torch.float32, True)])
def test_eager_path_equals_the_custom_op(pairwise_backend, mode, dtype, masked):
    """Plain eager calls skip the custom op's dispatch (an autograd.Function around the same
    body): losses, iterations and gradients (through a non-uniform upstream gradient) bit for bit."""
    module = pairwise_module(pairwise_backend)
    student, mc, _, mask = inputs(dtype, seed=4)
    args = (mc, None, mask if masked else None, 2.0, mode, None, 30, 50, 1e-6, 17, "plain")
    upstream = torch.linspace(0.5, 2.0, B, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    results = []
    for call in (module.pairwise_loss_call, module.pairwise_loss_op):
        s = student.detach().clone().requires_grad_(True)
        loss, grad, iterations = call(s, *args)
        (loss * upstream).sum().backward()
        results.append((loss.detach(), grad, iterations, s.grad))
    eager, op = results
    for a, b in zip(eager, op):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert eager[3].dtype == dtype and eager[3].abs().sum() > 0


@pytest.mark.parametrize("pairwise_backend", PAIRWISE_BACKENDS)
def test_eager_path_only_in_plain_eager(pairwise_backend):
    """The autograd.Function in plain eager mode; the custom op, one opaque node, wherever a
    dispatch mode or a tensor subclass would look inside (here a recording mode)."""
    module = pairwise_module(pairwise_backend)
    student, mc, _, _ = inputs(seed=5)
    s = student.clone().requires_grad_(True)
    loss = radi_fast.radi_pairwise_loss(s, mc, backend=pairwise_backend)
    assert type(loss.grad_fn.next_functions[0][0]).__name__ == module.pairwise_loss_call.function.__name__ + "Backward"
    with OpRecorder() as recorder:
        traced = radi_fast.radi_pairwise_loss(s, mc, backend=pairwise_backend)
    assert str(module.pairwise_loss_op._opoverload) in recorder.ops
    assert not any(op.startswith("aten.sort") for op in recorder.ops)  # the body ran inside the op
    assert torch.equal(traced.detach(), loss.detach())


@pytest.mark.parametrize("pairwise_backend", PAIRWISE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_table(dtype, pairwise_backend):
    student, mc, targets, _ = inputs(dtype)
    want = torch.float64 if dtype == torch.float64 else torch.float32
    for name, fn in losses(mc, targets, pairwise_backend=pairwise_backend).items():
        if pairwise_backend == "triton" and name != "radi_p":
            continue
        loss, grad = loss_and_grad(fn, student)
        assert (loss.dtype, grad.dtype) == (want, dtype), name
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), name
    # a half student with an fp32 teacher: fp32; with an fp64 teacher: fp64
    s16 = student.to(torch.bfloat16)
    assert loss_and_grad(losses(mc.float(), targets.float())["radi_l"], s16)[0].dtype == torch.float32
    assert loss_and_grad(losses(mc.double(), targets.double())["radi_p"], s16)[0].dtype == torch.float64


def test_autocast_bf16_cpu():
    """Under CPU autocast (bf16) a linear head gives bf16 logits; every loss returns fp32, the
    gradient reaches the fp32 weights, and the value equals the same call without autocast
    (autocast does not recast the losses' own matmuls)."""
    _, mc, targets, mask = inputs()
    features = torch.randn(B, 16, generator=torch.Generator().manual_seed(3))
    head = nn.Linear(16, N)
    for masked in (None, mask):
        for name, fn in losses(mc, targets, masked).items():
            head.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = head(features)
                assert logits.dtype == torch.bfloat16
                torch.manual_seed(5)
                loss = fn(logits)
            assert loss.dtype == torch.float32, name
            loss.backward()
            assert head.weight.grad.dtype == torch.float32 and torch.isfinite(head.weight.grad).all(), name
            torch.manual_seed(5)
            assert torch.equal(loss.detach(), fn(logits.detach()).detach()), name


# ----------------------------------------------------------------------------- registration
def test_ops_registered_right_after_import():
    code = ("import torch, radi_fast\n"
            "torch.ops.radi_fast.partial_list_masked.default\n"
            "torch.ops.radi_fast.pairwise_loss_cpu.default\n"
            "print(radi_fast.backend_info()['extension']['extension'])\n"
            "torch.ops.radi_fast.partial_list.default\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    built = sampler.compiled_available()
    if built:
        assert res.returncode == 0, res.stderr
        assert res.stdout.split()[-1] == "True"
    else:  # without the extension only the compiled op is missing
        assert "partial_list" in res.stderr and res.stdout.split()[-1] == "False"


# ----------------------------------------------------------------------------- bench alias
def test_pytest_bench_benchmark_alias(tmp_path):
    """``pytest bench/ --benchmark`` is ``--benchmark-only``: one small benchmark runs and is
    recorded (``--benchmark-only`` still collects)."""
    env = dict(os.environ, RADI_BENCH_JSON=str(tmp_path / "bench.json"), RADI_BENCH_SECONDS="0.01",
               RADI_BENCH_MIN_ROUNDS="1", RADI_BENCH_MAX_ROUNDS="1")
    env.pop("TRITON_INTERPRET", None)
    case = "bench/test_bench_listwise.py::test_radi_l_fwd_bwd[B1-N2500-listnet-radi_fast]"
    res = subprocess.run([sys.executable, "-m", "pytest", case, "--benchmark", "-q", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "1 passed" in res.stdout
    doc = json.load(open(tmp_path / "bench.json"))
    assert len(doc["results"]) == 1
    res = subprocess.run([sys.executable, "-m", "pytest", "bench/", "--benchmark-only", "--co", "-q",
                          "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert res.returncode == 0 and "test_bench_listwise.py" in res.stdout, res.stderr[-2000:]
