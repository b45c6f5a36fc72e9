"""Hook substrate shared by every model (DESIGN §2).

``HookPoint`` is TransformerLens' identity module with three additions:
- ``listened``: whether anything will read the value (a TransformerLens hook, or a
  running nnsight trace that reads, edits or caches this very hook point), so models
  compute costly values (states, patterns) only then;
- a shape check: a hook (or nnsight assignment) that returns a tensor of another
  shape raises ``HookShapeError`` naming the hook;
- it is an ``nn.Module``, so ``NNsight(model)`` sees it and ``.output`` reads/sets it.

``HookedModel`` is ``transformer_lens.HookedRootModule`` whose name-taking methods
(``run_with_hooks``, ``run_with_cache``, ``hooks``, ``add_hook``) first check every
name and raise ``UnknownHookError`` with the closest valid names, and whose
``run_with_cache`` returns a TransformerLens ``ActivationCache`` that knows our models
(``ssmlens.interp.activation_cache``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch.nn.modules.module as _module_hooks
from torch import Tensor
from transformer_lens.hook_points import HookPoint as _TLHookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from ssmlens.interp.activation_cache import ActivationCache
from ssmlens.interp.hook_names import check_hook_names

_NNSIGHT_STATE = "__nnsight__"  # where nnsight keeps its per-module controller state


class HookShapeError(ValueError):
    """A hook or an nnsight edit returned a value of the wrong shape or type."""


class HookPoint(_TLHookPoint):
    """Identity module that every internal value passes through."""

    def _untouched(self) -> bool:
        """Nothing can see or change the value: no hook of ours, TransformerLens' or
        torch's (global ones included), no nnsight state, no patched ``forward``."""
        return not (
            self._forward_hooks or self._forward_pre_hooks or self._backward_hooks
            or self._backward_pre_hooks or _NNSIGHT_STATE in self.__dict__ or "forward" in self.__dict__
            or _module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks
            or _module_hooks._global_backward_hooks or _module_hooks._global_backward_pre_hooks
        )

    @property
    def listened(self) -> bool:
        """True if a forward hook is attached, or a running nnsight trace reads, writes,
        skips or caches this hook point (``_nnsight_wants``)."""
        if self._forward_hooks or self._backward_hooks:
            return True
        state = self.__dict__.get(_NNSIGHT_STATE)
        return state is not None and _nnsight_wants(state)

    def __call__(self, x: Tensor) -> Tensor:
        if self._untouched():  # the common case, on every forward: skip nn.Module's dispatch
            return x
        out = super().__call__(x)
        if not isinstance(out, Tensor):
            raise HookShapeError(
                f"hook {self.name!r} returned {type(out).__name__}, expected a tensor of shape {tuple(x.shape)}"
            )
        if out.shape != x.shape:
            raise HookShapeError(
                f"hook {self.name!r} returned shape {tuple(out.shape)}, expected {tuple(x.shape)}"
            )
        return out


def _nnsight_wants(state: Any) -> bool:
    """Whether the nnsight trace running over a module will touch its value.

    nnsight 0.8 instruments every module of a wrapped model and, while a trace runs,
    hands each one's ``{path}.input`` / ``.skip`` / ``.output`` to its interleaver. A
    trace's intervention code runs in step with the forward: it is parked on the next
    location it needs (``interleaver.parked``), and caches subscribe to locations
    (``interleaver.observers``). Everything it asked for before lies earlier in the
    forward, so when a model asks ``listened`` (just before computing the value) the
    value is wanted exactly when one of its locations is parked on or observed.
    """
    try:
        interleaver, _, locations = state.active()
        if interleaver is None:
            return False
        parked, observers = interleaver.parked, interleaver.observers
        return any(loc in parked or loc in observers for loc in locations)
    except Exception:  # an nnsight internal we do not know: be safe, compute the value
        return True


def _hook_names(hook_list: Sequence[tuple[Any, Callable]] | None) -> list[str]:
    return [name for name, _ in (hook_list or []) if isinstance(name, str)]


class HookedModel(HookedRootModule):
    """Base class of every ssmlens model: TransformerLens hooks with checked names."""

    def check_names(self, names: Sequence[str] | str | None) -> None:
        """Raise UnknownHookError (with close matches) for any unknown hook name."""
        if names is None or callable(names):
            return
        names = [names] if isinstance(names, str) else list(names)
        check_hook_names(names, self.hook_dict.keys())

    @contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True, clear_contexts=False):
        self.check_names(_hook_names(fwd_hooks) + _hook_names(bwd_hooks))
        with super().hooks(list(fwd_hooks), list(bwd_hooks), reset_hooks_end, clear_contexts) as m:
            yield m

    def run_with_hooks(self, *model_args, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True,
                       clear_contexts=False, **model_kwargs):
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts) as m:
            return m.forward(*model_args, **model_kwargs)

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False):
        if isinstance(name, str):
            self.check_names([name])
        return super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def run_with_cache(self, *model_args, names_filter=None, device=None, remove_batch_dim=False,
                       incl_bwd=False, reset_hooks_end=True, clear_contexts=False, **model_kwargs):
        """Run and cache activations; returns ``(output, ActivationCache)``.

        ``names_filter``: None (everything, states and patterns included), a name, a
        list of names (checked), or a predicate on names.
        """
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if isinstance(names_filter, (list, tuple)):
            self.check_names(names_filter)
            names_filter = list(names_filter)
        try:
            out, cache = super().run_with_cache(
                *model_args, names_filter=names_filter, device=device,
                remove_batch_dim=remove_batch_dim, incl_bwd=incl_bwd,
                reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts, **model_kwargs)
        finally:
            # TransformerLens leaves is_caching set on error; nothing else stays attached.
            self.is_caching = False
        return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)

    @property
    def hook_names(self) -> list[str]:
        return list(self.hook_dict.keys())
