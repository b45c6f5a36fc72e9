"""Synthetic recall tasks: token batches with positions labelled by role (DESIGN §5).

``make_task("ar").sample(n, seed)`` gives a :class:`TaskBatch`; ``corrupt`` makes the
counterfactual batch for patching. Each task module documents its vocabulary and
roles.
"""

from ssmlens.interp.tasks.ar import ARConfig, ARTask
from ssmlens.interp.tasks.atr import ATRConfig, ATRTask
from ssmlens.interp.tasks.base import STANDARD_ROLES, TaskBatch
from ssmlens.interp.tasks.corrupt import corrupt
from ssmlens.interp.tasks.induction import InductionConfig, InductionTask
from ssmlens.interp.tasks.mqar import MQARConfig, MQARTask, power_law_probs
from ssmlens.interp.tasks.registry import TASKS, make_task, task_from_batch
from ssmlens.interp.tasks.selective_copy import SelectiveCopyConfig, SelectiveCopyTask
from ssmlens.interp.tasks.task import Task

__all__ = [
    "ARConfig",
    "ARTask",
    "ATRConfig",
    "ATRTask",
    "InductionConfig",
    "InductionTask",
    "MQARConfig",
    "MQARTask",
    "STANDARD_ROLES",
    "SelectiveCopyConfig",
    "SelectiveCopyTask",
    "TASKS",
    "Task",
    "TaskBatch",
    "corrupt",
    "make_task",
    "power_law_probs",
    "task_from_batch",
]
