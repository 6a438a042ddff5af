"""Relaunching a compiled Triton kernel without its JIT dispatch (docs/triton.md, "Host work").

``kernel[grid](*args, **constexprs)`` binds and specialises every argument, builds a cache key
and looks the compiled kernel up on every launch: ~10-20 us of host time per launch at our
argument counts, where the compiled kernel's own launcher takes ~3-5 us (Triton issue #3503,
tritonbench #1005). The Sinkhorn loop launches one kernel with the same tensors over and over,
so it keeps what the first launch compiled and calls its launcher directly.

Correct only where the caller guarantees that Triton would specialise a later launch exactly as
the first: tensors of the same dtype and 16-byte alignment (the same objects, or
:func:`pointer_key` in the key), the same integers except those declared ``do_not_specialize``
(whose Triton type, i32, stays), the same constexprs, grid, device and options. The caller
states that by the ``key`` it passes (and ``pinned`` keeps the keyed objects alive, so an
``id`` is never reused). Falls back to the JIT launch under the interpreter (nothing compiled to
keep), with a launch hook installed (profilers), or with ``enabled=False``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, Sequence, Tuple

from .._backend import triton_interpret

try:  # the launch hooks the JIT path honours (Triton >= 3.4); without them: always the JIT
    from triton import knobs as _knobs
except ImportError:  # pragma: no cover - older Triton
    _knobs = None


def _hooked() -> bool:
    """A launch hook is installed (a profiler's): the JIT path builds its metadata and calls it.
    Triton keeps them as ``HookChain`` objects, empty unless something was added."""
    return any(h is not None and bool(getattr(h, "calls", True))
               for h in (_knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook))


def _current_stream() -> Tuple[int, Any]:
    from triton.runtime import driver

    device = driver.active.get_current_device()
    return device, driver.active.get_current_stream(device)


def pointer_key(*tensors) -> Tuple[Tuple[Any, bool], ...]:
    """What Triton specialises a tensor argument on: its dtype and whether its address is a
    multiple of 16 bytes (views of rows of a buffer differ in the second)."""
    return tuple((t.dtype, t.data_ptr() % 16 == 0) for t in tensors)


class DirectLaunch:
    """``launch(key, pinned, args, constexprs)``: ``kernel[grid](*args, **constexprs, **options)``
    (``options``: the launch options and the constexprs that never change between launches)
    the first time a ``key`` is seen on the current device, the kept compiled kernel's launcher
    after that (same arguments in signature order, constexprs included, as Triton's ``run``
    passes them). ``stream`` returns (device, stream) as Triton's JIT reads them."""

    def __init__(self, kernel, grid: Sequence[int], options: Dict[str, Any], enabled: bool = True,
                 stream: Callable[[], Tuple[int, Any]] = None):
        self.kernel, self.grid, self.options = kernel, tuple(grid) + (1,) * (3 - len(grid)), options
        self.enabled = enabled and _knobs is not None and not triton_interpret()
        self.stream = stream or _current_stream
        # (device, key) -> (compiled kernel, its constexpr values in signature order, pinned objects)
        self.compiled: Dict[Hashable, Tuple[Any, Tuple[Any, ...], Tuple[Any, ...]]] = {}
        names = list(kernel.arg_names)
        defaults = {p.name: p.default for p in getattr(kernel, "params", ()) if p.has_default}
        self._names, self._defaults = names, defaults

    def _values(self, args: Tuple[Any, ...], constexprs: Dict[str, Any]) -> Tuple[Any, ...]:
        """Every kernel parameter's value in signature order (what Triton's binder produces)."""
        fixed = self.options  # the call's constant constexprs beside the launch options
        return args + tuple(constexprs[n] if n in constexprs else fixed[n] if n in fixed else self._defaults[n]
                            for n in self._names[len(args):])

    def __call__(self, key: Hashable, pinned: Tuple[Any, ...], args: Tuple[Any, ...],
                 constexprs: Dict[str, Any]) -> None:
        if not self.enabled or _hooked():
            self.kernel[self.grid](*args, **constexprs, **self.options)
            return
        device, stream = self.stream()
        entry = self.compiled.get((device, key))
        if entry is not None:  # (the key fixes the constexprs: their values are kept with it)
            self.run_compiled(entry[0], stream, args + entry[1])
            return
        compiled = self.kernel[self.grid](*args, **constexprs, **self.options)
        if hasattr(compiled, "result"):  # a compile future (Triton's asynchronous mode)
            compiled = compiled.result()
        if all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata")):  # not the interpreter
            self.compiled[(device, key)] = (compiled, self._values(args, constexprs)[len(args):], pinned)

    def run_compiled(self, compiled, stream, values: Tuple[Any, ...]) -> None:
        """The launch Triton's ``JITFunction.run`` ends with (no launch metadata: no hook is set)."""
        compiled.run(self.grid[0], self.grid[1], self.grid[2], stream, compiled.function, compiled.packed_metadata,
                     None, None, None, *values)


__all__ = ["DirectLaunch", "pointer_key"]
