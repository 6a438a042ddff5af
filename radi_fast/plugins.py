"""Your own model and data in the trainer, without editing the package: ``--model`` and ``--data``.

A plug-in is named ``package.module:factory`` (an importable module; the current directory is
searched too, as ``python -m`` does) or ``path/to/file.py:factory`` (a file, loaded once per
process). The factories' signatures:

* ``--data``: ``factory(cfg) -> radi_fast.data.VideoQAData``, the train / val / test datasets
  (items as in :mod:`radi_fast.data`) with the answer vocabulary; ``cfg`` is the whole
  :class:`radi_fast.config.Config`.
* ``--model``: ``factory(data, cfg) -> radi_fast.model.RadiModel`` (``encode`` / ``decode``, so
  that MC dropout repeats only the last layer), called with torch seeded by the stage's seed.

``examples/custom_model_and_data.py`` is a complete example; docs/training.md, "Plugging in your
own model and data", explains it.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Callable, Dict

_FILE_MODULES: Dict[str, object] = {}  # absolute path -> module (a file is executed once per process)


def _import_file(path: str, flag: str):
    full = os.path.abspath(path)
    if full in _FILE_MODULES:
        return _FILE_MODULES[full]
    if not os.path.isfile(full):
        raise ValueError(f"{flag} {path}: file not found")
    name = "radi_fast_plugin_" + "".join(c if c.isalnum() else "_" for c in full)
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that pickling its classes (DataLoader workers) finds them
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ValueError(f"{flag} {path}: importing it failed ({type(e).__name__}: {e})") from e
    _FILE_MODULES[full] = module
    return module


def load_factory(spec: str, flag: str) -> Callable:
    """The callable named by ``spec`` (``package.module:factory`` or ``path/to/file.py:factory``).

    Raises ``ValueError`` naming ``flag`` when the spec is malformed, the module cannot be
    imported, or it has no callable of that name.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise ValueError(f"{flag} must be package.module:factory or path/to/file.py:factory, got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        module = _import_file(module_name, flag)
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # as ``python -m`` does; the console script does not
        try:
            module = importlib.import_module(module_name)
        except Exception as e:
            raise ValueError(f"{flag} {spec}: cannot import {module_name} ({type(e).__name__}: {e})") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{flag} {spec}: {module_name} has no callable {attr!r}")
    return factory
