"""Task lookup by name: ``TASKS``, ``make_task`` and ``task_from_batch``."""

from __future__ import annotations

import dataclasses
from typing import Any

from ssmlens.interp.tasks.ar import ARTask
from ssmlens.interp.tasks.atr import ATRTask
from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.interp.tasks.induction import InductionTask
from ssmlens.interp.tasks.mqar import MQARTask
from ssmlens.interp.tasks.selective_copy import SelectiveCopyTask
from ssmlens.interp.tasks.task import Task

TASKS: dict[str, type[Task]] = {
    "ar": ARTask,
    "mqar": MQARTask,
    "induction": InductionTask,
    "selective_copy": SelectiveCopyTask,
    "atr": ATRTask,
}


def make_task(name: str, **kwargs: Any) -> Task:
    """The task registered as ``name``, its config fields overridden by ``kwargs``.

    Raises ValueError naming the valid task names for an unknown ``name``, and the
    offending field (with the valid ones) for an unknown keyword.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    # Task.__init__ rejects unknown fields, naming the field and the valid ones.
    return TASKS[name](**kwargs)


def task_from_batch(batch: TaskBatch) -> Task:
    """The task that generated ``batch``, rebuilt from ``batch.task`` and ``batch.config``."""
    if batch.task not in TASKS:
        raise ValueError(f"batch comes from unknown task {batch.task!r}; valid tasks: {', '.join(TASKS)}")
    cls = TASKS[batch.task]
    # batch.config also carries entries that are not config fields (seed, corruption).
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    return cls(**{k: v for k, v in batch.config.items() if k in fields})
