"""Base types of ``ssmlens.probes.ablation``: the Ablation interface, its bound form, errors.

An ``Ablation`` is bound to a model and a batch (``bind``), which checks that the
model has what the ablation removes and precomputes what it needs (means, resampling
sources); the ``BoundAblation`` then gives forward hooks for any rows of that batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ssmlens.interp.tasks.base import TaskBatch

HookFn = Callable[[Tensor, object], Tensor]
Hooks = list[tuple[str, HookFn]]


class AblationError(ValueError):
    """A malformed ablation spec or one that cannot run on a model."""


class NotApplicable(AblationError):
    """The model lacks the component an ablation removes (e.g. no_memory on Mamba)."""


def _tokens(batch) -> Tensor:
    return batch.tokens if isinstance(batch, TaskBatch) else torch.as_tensor(batch)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _fmt(values) -> str:
    return ",".join(str(v) for v in values)


class Ablation:
    """Base class: ``bind(model, batch)`` checks the model and returns a BoundAblation."""

    name = ""

    def bind(self, model, batch=None) -> "BoundAblation":
        return BoundAblation(lambda rows: self.fwd_hooks(model))

    def fwd_hooks(self, model) -> Hooks:  # structural ablations: hooks that need no data
        raise NotImplementedError(f"{type(self).__name__} must define fwd_hooks(model) or override bind()")

    @property
    def label(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.label


class BoundAblation:
    """An ablation fitted to a model and batch; ``fwd_hooks(rows)`` gives the hooks for
    the examples ``rows`` of that batch (a slice; None = all)."""

    def __init__(self, make: Callable[[slice | None], Hooks]):
        self._make = make

    def fwd_hooks(self, rows: slice | None = None) -> Hooks:
        return self._make(rows)

