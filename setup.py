"""Build script for radi_fast (pyproject.toml names setuptools' PEP 517 / 660 backend, so every
pip takes the same path to it).

The C++/CUDA sampler in csrc/ is optional: when torch cannot be imported at build time, or the
compile fails, the package installs without it and falls back to the pure-PyTorch sampler; the
install then says so in one line, with how to fix it (:func:`_report_no_extension`).
"""
import glob
import os
import re
import sys
import warnings

from setuptools import setup

PACKAGES = ["radi_fast", "radi_fast.ops", "radi_fast.kernels"]
# kernels/ lives at the top level of the repository (the project's fixed layout) but is
# imported as radi_fast.kernels.
PACKAGE_DIR = {"radi_fast.kernels": "kernels"}


HERE = os.path.dirname(os.path.abspath(__file__))


def _say(message):
    print(f"radi_fast setup: {message}", file=sys.stderr, flush=True)


# setuptools runs this file for every PEP 517 hook; only these commands build (egg_info / dist_info
# only read the metadata), so only they report a missing extension
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def _warnings_are_recorded():
    """True inside a build-backend hook whose runner records warnings to show them to the user
    (pip >= 24.1's pyproject_hooks: they appear as a BuildBackendWarning)."""
    try:
        return isinstance(getattr(warnings._showwarnmsg_impl, "__self__", None), list)
    except Exception:
        return False


def _report_no_extension(reason, fix):
    """One line, at build time, saying that radi_fast._C is not built, why and how to fix it.

    pip captures a build backend's output (shown with ``pip install -v``); a warning reaches the
    user through newer pips, and older ones get the line on the terminal (``/dev/tty``) when
    there is one.
    """
    if not BUILD_COMMANDS & set(sys.argv[1:]):
        return
    line = (f"radi_fast: installed WITHOUT the compiled sampler radi_fast._C ({reason}); the pure-PyTorch "
            f"sampler will be used. To build it: {fix}")
    _say(line)
    warnings.warn(line, stacklevel=2)
    if not _warnings_are_recorded() and not sys.stderr.isatty():
        try:
            with open("/dev/tty", "w") as tty:
                tty.write(line + "\n")
        except OSError:
            pass


def _version():
    with open(os.path.join(HERE, "radi_fast", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _sources(pattern):
    # setuptools wants paths relative to the project root
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def extension_modules():
    """The compiled sampler op ``radi_fast._C`` (csrc/), or nothing when it cannot be built here.

    * ``RADI_FAST_NO_EXT=1``: skip the extension (pure-PyTorch sampler only).
    * torch not importable (pip's build isolation hides the installed torch, and torch is
      deliberately not a build requirement, so nothing big is downloaded): skip with a message;
      ``pip install --no-build-isolation -e .`` builds it against the installed torch.
    * A CPU build of torch gives a CppExtension (csrc/*.cpp); a CUDA build of torch with a CUDA
      toolkit (CUDA_HOME / nvcc found) gives a CUDAExtension that adds csrc/cuda/*.cpp and
      csrc/cuda/*.cu (``RADI_FAST_NO_CUDA=1`` forces the CPU-only extension). No GPU is needed
      to build; TORCH_CUDA_ARCH_LIST picks the architectures as usual.
    * A failed compile also falls back (with a message), unless ``RADI_FAST_REQUIRE_EXT=1``,
      which turns every skip or failure into an error (use it in CI).
    """
    require = _env_flag("RADI_FAST_REQUIRE_EXT")
    if _env_flag("RADI_FAST_NO_EXT"):
        if require:
            raise RuntimeError("RADI_FAST_NO_EXT and RADI_FAST_REQUIRE_EXT are both set")
        _report_no_extension("RADI_FAST_NO_EXT is set", "unset RADI_FAST_NO_EXT")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except Exception as exc:  # ImportError under build isolation, or a broken torch
        reason = f"torch is not importable at build time: {type(exc).__name__}: {exc}"
        fix = "install torch first, then pip install --no-build-isolation -e . (or without -e)"
        if require:
            raise RuntimeError(f"RADI_FAST_REQUIRE_EXT=1 but {reason}; {fix}") from exc
        _report_no_extension(reason, fix)
        return [], {}

    use_cuda = (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and not _env_flag("RADI_FAST_NO_CUDA")
    )
    sources = _sources("csrc/*.cpp")
    # -ffp-contract=off: no FMA contraction, so the CPU keys equal the CUDA keys bit for bit
    cxx = ["-O3", "-ffp-contract=off"]
    link = []
    macros = []
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        # at::parallel_for's OpenMP backend is a header template: without -fopenmp it runs serially
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if use_cuda:
        sources += _sources("csrc/cuda/*.cpp") + _sources("csrc/cuda/*.cu")
        macros.append(("RADI_WITH_CUDA", "1"))
        extension = CUDAExtension(
            "radi_fast._C",
            sources,
            define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-fmad=false"]},
            extra_link_args=link,
        )
        _say(f"building radi_fast._C with CUDA kernels (torch {torch.__version__}, CUDA_HOME={CUDA_HOME})")
    else:
        extension = CppExtension(
            "radi_fast._C",
            sources,
            define_macros=macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
        _say(f"building radi_fast._C for the CPU (torch {torch.__version__})")

    base = BuildExtension.with_options(no_python_abi_suffix=True)

    class OptionalBuildExtension(base):
        """Falls back to a pure-Python install when the compile fails (unless required)."""

        def run(self):
            try:
                super().run()
            except Exception as exc:
                if require:
                    raise
                _report_no_extension(
                    f"compiling it failed: {type(exc).__name__}: {exc}",
                    "see the compiler's error with pip install -v (a C++ compiler and ninja are needed); "
                    "RADI_FAST_REQUIRE_EXT=1 makes this an error")
                self.extensions = []

        def get_outputs(self):
            return [path for path in super().get_outputs() if os.path.exists(path)]

    return [extension], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = extension_modules()

setup(
    name="radi_fast",
    version=_version(),
    description="Fast, faithful RADI ranking distillation losses (CVPR 2024) with Triton and C++/CUDA kernels",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    python_requires=">=3.9",
    # torch is deliberately not a hard requirement: a bare "torch" pulls a multi-GB CUDA build
    # when none is installed. Install the PyTorch build for your platform first (see README).
    install_requires=["numpy", "tqdm"],
    extras_require={
        # triton runs the kernel tests on the CPU under TRITON_INTERPRET=1 (Linux wheels only)
        "test": ["pytest", "pytest-benchmark", "hypothesis", "scipy", "numpy", "triton; platform_system == 'Linux'",
                 "matplotlib", "pot"],
        "triton": ["triton"],
        "bench": ["pytest-benchmark", "matplotlib", "pot", "geomloss"],
        # examples/: the Hugging Face Trainer and Lightning recipes (tests/test_examples.py)
        "examples": ["transformers>=4.46", "accelerate>=0.26", "lightning>=2.2"],
    },
    entry_points={"console_scripts": ["radi-fast-train = radi_fast.train:cli"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
