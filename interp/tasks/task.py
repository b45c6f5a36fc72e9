"""The interface every synthetic task implements, and config-field checking.

A task is a config (a frozen dataclass, validated on construction) plus a
generator: ``task.sample(n, seed)`` returns a :class:`TaskBatch` that depends only
on the config, ``n`` and ``seed``. ``vocab_layout()`` names the token ranges, so
code outside the task (corruption, dashboards) never hard-codes token ids.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.interp.tasks.sampling import make_generator


def check_fields(task: str, config_cls: type, kwargs: dict[str, Any]) -> None:
    """Raise ValueError naming the first key of ``kwargs`` that ``config_cls`` lacks."""
    valid = [f.name for f in dataclasses.fields(config_cls)]
    for name in kwargs:
        if name not in valid:
            raise ValueError(
                f"unknown config field {name!r} for task {task!r}; valid fields: {', '.join(valid)}"
            )


def require(ok: bool, message: str) -> None:
    """Config validation: raise ValueError(message) unless ``ok``."""
    if not ok:
        raise ValueError(message)


class Task(ABC):
    """A synthetic sequence task: ``sample(n, seed) -> TaskBatch``.

    Construct with a config, keyword overrides of its fields, or both:
    ``ARTask()``, ``ARTask(n_pairs=8)``, ``ARTask(ARConfig(n_keys=64), n_pairs=4)``.
    """

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        if config is None:
            config = self.Config()
        elif not isinstance(config, self.Config):
            raise TypeError(f"task {self.name!r} needs a {self.Config.__name__}, got {type(config).__name__}")
        check_fields(self.name, self.Config, overrides)
        self.config = dataclasses.replace(config, **overrides) if overrides else config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids; every token lies in ``[0, vocab_size)``."""

    @property
    @abstractmethod
    def seq_len(self) -> int:
        """Length of every sampled sequence (shorter examples are right-padded to it)."""

    @abstractmethod
    def vocab_layout(self) -> dict[str, tuple[int, int]]:
        """Token ranges by name, half-open ``(low, high)``; they partition ``[0, vocab_size)``."""

    @property
    def key_range(self) -> tuple[int, int] | None:
        """Half-open range of key tokens, or None when the task has no key vocabulary."""
        return self.vocab_layout().get("key")

    @property
    def value_range(self) -> tuple[int, int] | None:
        """Half-open range of value tokens, or None when the task has no value vocabulary."""
        return self.vocab_layout().get("value")

    def token_name(self, token: int) -> str:
        """A readable name for a token id, e.g. ``'<bos>'`` or ``'key:17'`` (17th key)."""
        for name, (low, high) in self.vocab_layout().items():
            if low <= token < high:
                return f"<{name}>" if high - low == 1 else f"{name}:{token - low}"
        raise ValueError(f"token {token} outside the vocabulary [0, {self.vocab_size})")

    def sample(self, n: int, seed: int) -> TaskBatch:
        """``n`` examples drawn with a generator seeded by ``seed``; same inputs, same batch."""
        if int(n) < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        tokens, loss_mask, roles = self._generate(int(n), make_generator(seed))
        config = {**dataclasses.asdict(self.config), "seed": int(seed)}
        return TaskBatch(tokens, loss_mask, roles, self.vocab_size, self.name, config)

    @abstractmethod
    def _generate(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """tokens int64 [n, seq_len], loss_mask bool [n, seq_len], roles (int64 [n, k] each)."""
