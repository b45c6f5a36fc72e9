"""Deterministic training data: batch ``s`` of a run depends only on ``(seed, s)``.

Because no data iterator carries state, resuming at step ``s`` reproduces exactly
the batches an uninterrupted run would have seen. The held-out evaluation set is
drawn from a seed in another hash domain, so it never shares a seed with a
training batch.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ssmlens.interp.tasks.base import TaskBatch


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def train_seed(seed: int, step: int) -> int:
    """Seed of the training batch of optimizer step ``step``."""
    return derive_seed("train", int(seed), int(step))


def eval_seed(seed: int) -> int:
    """Seed of the run's fixed held-out evaluation set."""
    return derive_seed("eval", int(seed))


def task_names() -> list[str]:
    from ssmlens.interp.tasks import TASKS

    return sorted(TASKS)


def build_task(name: str, task_config: dict[str, Any] | None = None):
    """The task ``name`` with ``task_config`` overrides; errors name the valid choices."""
    from ssmlens.interp.tasks import TASKS, make_task

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return make_task(name, **(task_config or {}))


class TaskData:
    """Training batches by step and the held-out set of one run."""

    def __init__(self, task, batch_size: int, seed: int, eval_size: int):
        self.task = task
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.eval_size = int(eval_size)
        self._eval: TaskBatch | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.task.vocab_size)

    @property
    def seq_len(self) -> int:
        return int(self.task.seq_len)

    def batch(self, step: int) -> TaskBatch:
        """The training batch of optimizer step ``step``: ``batch_size`` examples."""
        return self.task.sample(self.batch_size, seed=train_seed(self.seed, step))

    def eval_set(self) -> TaskBatch:
        """The fixed held-out set (``eval_size`` examples), sampled once and kept."""
        if self._eval is None:
            self._eval = self.task.sample(self.eval_size, seed=eval_seed(self.seed))
        return self._eval
