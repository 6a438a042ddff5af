"""What a setting may hold, declared beside it: the ``metadata`` of a settings dataclass field.

Every field of the trainer's settings (``radi_fast.config.Config`` and its sections) carries
``metadata={"help": ...}`` plus what its values may be:

* ``"choices"``: the allowed values of an enum setting (argparse shows them in ``--help``);
* ``"min"`` / ``"gt"`` (lower bound, inclusive / exclusive), ``"max"`` / ``"lt"`` (upper bound):
  the range of a number; every float must also be finite;
* ``"check"``: a function ``value -> problem or None`` for anything else (``lam``: a positive
  number or ``"auto"``).

:func:`field_problem` says what is wrong with a value, :func:`check_fields` raises for the first
bad field of a section, :func:`allowed` phrases the rule for ``--help`` and error messages. This
module imports nothing from the package: the sections (in config.py, model.py, schemes.py,
synthetic.py) import it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

RANGE_KEYS = ("min", "gt", "max", "lt")


def allowed(metadata) -> str:
    """The rule of a field in words: ``one of a, b, c``, ``>= 1``, ``in [0, 1)``; "" when none."""
    if "choices" in metadata:
        return "one of " + ", ".join(map(str, metadata["choices"]))
    lo = ("[", metadata["min"]) if "min" in metadata else ("(", metadata["gt"]) if "gt" in metadata else None
    hi = (metadata["max"], "]") if "max" in metadata else (metadata["lt"], ")") if "lt" in metadata else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[0]}{hi[1]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f"{'<=' if hi[1] == ']' else '<'} {hi[0]}"
    return metadata.get("rule", "")


def field_problem(f: dataclasses.Field, value: Any) -> Optional[str]:
    """What is wrong with ``value`` for the field ``f`` (``"must be ..."``), None when it is fine."""
    m = f.metadata
    if "choices" in m and value not in m["choices"]:
        return f"must be {allowed(m)}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number" + (f" {allowed(m)}" if any(k in m for k in RANGE_KEYS) else "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = (("min" not in m or value >= m["min"]) and ("gt" not in m or value > m["gt"])
              and ("max" not in m or value <= m["max"]) and ("lt" not in m or value < m["lt"]))
        if not ok:
            return f"must be {allowed(m)}"
    if "check" in m:
        return m["check"](value)
    return None


def check_fields(obj, where: str = "--{name}") -> None:
    """Raise ``ValueError("<where> must be ..., got <value>")`` for the first field of the dataclass
    instance ``obj`` whose value breaks its rule (``where`` is formatted with the field's name)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        problem = field_problem(f, value)
        if problem:
            raise ValueError(f"{where.format(name=f.name)} {problem}, got {value!r}")


def auto_or_positive(value: Any) -> Optional[str]:
    """The rule of ``lam``: ``"auto"`` or a positive finite number (given as a number or a string)."""
    if value == "auto":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    return None if math.isfinite(v) and v > 0 else "must be 'auto' or a positive number"


def numeric_fields_without_rule(cls) -> list:
    """The int / float fields of a settings dataclass that declare no range (a test keeps it empty)."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, (int, float)) and not isinstance(default, bool) and \
                not any(k in f.metadata for k in RANGE_KEYS + ("check", "choices")):
            out.append(f.name)
    return out
