"""Training of every registered model on every task (issue 5).

``train(TrainConfig(...))`` or ``Trainer(config).fit()``; see ``loop`` for the
loop, ``checkpointing`` for the run-directory layout and ``evaluate`` for answer
accuracy.
"""

from ssmlens.interp.training.checkpointing import RunDir, find_train_config, resolve_checkpoint
from ssmlens.interp.training.config import ConfigError, TrainConfig, load_config
from ssmlens.interp.training.data import TaskData, build_task, eval_seed, task_names, train_seed
from ssmlens.interp.training.evaluate import answer_hits, answer_losses, evaluate, evaluate_tasks
from ssmlens.interp.training.loop import RunConfigMismatch, Trainer, TrainResult
from ssmlens.interp.training.schedule import lr_at

__all__ = [
    "ConfigError",
    "RunConfigMismatch",
    "RunDir",
    "TaskData",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "answer_hits",
    "answer_losses",
    "build_task",
    "eval_seed",
    "evaluate",
    "evaluate_tasks",
    "find_train_config",
    "load_config",
    "lr_at",
    "resolve_checkpoint",
    "task_names",
    "train",
    "train_seed",
]


def train(config: TrainConfig | None = None, **fields) -> TrainResult:
    """Train (or resume, or return a finished run) and return its ``TrainResult``.

    ``train(TrainConfig(model="mamba", task="ar"))`` or ``train(model="mamba", steps=500)``.
    """
    config = config.replace(**fields) if config is not None else TrainConfig.from_dict(fields)
    return Trainer(config).fit()
