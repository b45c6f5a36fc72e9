"""Triton kernel modules that suit a call's device: compiled, or interpreted copies.

On CUDA tensors the compiled kernels run. On CPU tensors the same kernels run under
Triton's interpreter, which needs ``TRITON_INTERPRET=1`` before ``triton`` is first
imported (Triton's own jit helpers, ``tl.sum``, ``tl.cdiv``, ... are decided then). If
a kernel module itself was imported before the switch, its jit functions are compiled
ones; ``kernel_modules`` then loads interpreted copies of it from its file, once.

The copies are executed with the copies of the modules they import from standing in
``sys.modules`` under the original names, so a ``from ssmlens.kernels.triton_x import
f`` inside a copy binds the copy's ``f``. Kernel modules therefore import each other
by name (``from ssmlens.kernels.M import f``), and a call names every module of a
group in dependency order; a copy still holding a compiled jit function is refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

_PACKAGE = "ssmlens.kernels"
_COPIES: dict[tuple[str, ...], tuple[ModuleType, ...]] = {}
_COMPILED: dict[tuple[str, ...], tuple[ModuleType, ...]] = {}


def _interpreter_ready() -> None:
    import triton.language.standard as tl_standard
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl_standard.cdiv, InterpretedFunction):
        raise RuntimeError("the Triton interpreter needs TRITON_INTERPRET=1 set before triton is first "
                           "imported in this process")


def _compiled_jit(mod: ModuleType) -> list[str]:
    """Names of the jit functions of ``mod`` that are compiled, not interpreted."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return [k for k, v in vars(mod).items() if isinstance(v, JITFunction) and not isinstance(v, InterpretedFunction)]


def kernel_modules(names: tuple[str, ...], interpret: bool) -> tuple[ModuleType, ...]:
    """The modules ``ssmlens.kernels.<name>`` for ``names`` (listed in dependency order:
    a module after those it imports from), compiled, or, with ``interpret``, whose jit
    functions run under Triton's interpreter (copies, if the modules were imported
    compiled)."""
    if not interpret and names in _COMPILED:  # every launch asks: keep it a dict lookup
        return _COMPILED[names]
    mods = tuple(importlib.import_module(f"{_PACKAGE}.{n}") for n in names)
    if not interpret:
        _COMPILED[names] = mods
        return mods
    _interpreter_ready()
    if not any(_compiled_jit(m) for m in mods):
        return mods
    if names not in _COPIES:
        _COPIES[names] = _load_copies(names, mods)
    return _COPIES[names]


def _load_copies(names: tuple[str, ...], mods: tuple[ModuleType, ...]) -> tuple[ModuleType, ...]:
    full = [f"{_PACKAGE}.{n}" for n in names]
    saved = {k: sys.modules.get(k) for k in full}
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    copies = []
    try:
        for key, mod in zip(full, mods):
            spec = importlib.util.spec_from_file_location(key, mod.__file__)
            copy = importlib.util.module_from_spec(spec)
            sys.modules[key] = copy  # later copies import from this one
            spec.loader.exec_module(copy)
            copies.append(copy)
    finally:
        for key, mod in saved.items():
            if mod is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = mod
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
    for name, copy in zip(names, copies):
        left = _compiled_jit(copy)
        if left:
            raise RuntimeError(f"interpreted copy of {name} holds compiled jit functions {left}: list the "
                               "modules it imports from before it")
    return tuple(copies)
