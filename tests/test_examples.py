"""The recipes in examples/ run: a few steps each of the plain loop, the Hugging Face Trainer
and the LightningModule, with RADI-P and RADI-L (skipped when the ``examples`` extra, i.e.
transformers / lightning, is not installed; CI installs it)."""
from __future__ import annotations

import importlib.util
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    spec = importlib.util.spec_from_file_location(f"radi_example_{name}", os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(losses, steps):
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), losses


@pytest.mark.parametrize("loss, bf16", [("radi_p", False), ("radi_l", True)])
def test_plain_loop(loss, bf16):
    check(load("plain_loop").main(steps=3, loss=loss, bf16=bf16), 3)


@pytest.mark.parametrize("loss, bf16", [("radi_p", False), ("radi_l", True)])
def test_hf_trainer(loss, bf16):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    check(load("hf_trainer").main(steps=3, loss=loss, bf16=bf16), 3)


@pytest.mark.parametrize("loss, precision", [("radi_p", None), ("radi_l", "32-true")])
def test_lightning_module(loss, precision):
    pytest.importorskip("lightning")
    module = load("lightning_module")
    check(module.main(steps=3, loss=loss, precision=precision), 3)
