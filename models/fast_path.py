"""When a model may take its fused path, and the switch that turns it off.

A Mamba block computes the same values two ways: module by module (the reference,
what every hook and nnsight access sees), or through fused ops that skip a module's
call or a value's materialization (``ssmlens.kernels.conv1d``, ``ssmlens.kernels.norm``,
Δ's softplus inside the scan). A fused op is taken only when nothing could see the
difference: ``idle(module)`` says that no hook (ours, TransformerLens', torch's,
global ones included) and no nnsight trace is attached to the module or any hook
point inside it. ``fused_ops(False)`` turns every fused path off, for references in
tests and benchmarks.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch.nn as nn
import torch.nn.modules.module as _module_hooks

from ssmlens.interp.hooks import HookPoint

_STATE = {"on": True}
_NNSIGHT_STATE = "__nnsight__"  # where nnsight keeps its per-module state (as interp.hooks)


def fused_enabled() -> bool:
    """Whether fused paths are allowed (``fused_ops``)."""
    return _STATE["on"]


@contextmanager
def fused_ops(on: bool = True):
    """Allow (default) or forbid the fused paths inside the block."""
    old = _STATE["on"]
    _STATE["on"] = bool(on)
    try:
        yield
    finally:
        _STATE["on"] = old


def _global_hooks() -> bool:
    return bool(_module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks
                or _module_hooks._global_backward_hooks or _module_hooks._global_backward_pre_hooks)


def idle(module: nn.Module) -> bool:
    """Fused paths allowed and nothing can see ``module`` run: no hook on it or below
    it, no nnsight state, no patched ``forward``, no global module hook."""
    if not _STATE["on"] or _global_hooks():
        return False
    for m in (module.modules() if module._modules else (module,)):
        if (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or _NNSIGHT_STATE in m.__dict__ or "forward" in m.__dict__):
            return False
    return True


def hook_idle(point: HookPoint) -> bool:
    """Fused paths allowed and ``point`` untouched (its value need not exist)."""
    return _STATE["on"] and point._untouched()
