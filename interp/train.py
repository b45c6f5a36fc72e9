"""The trainer's public entry point (issue 5): ``from ssmlens.interp.train import train, TrainConfig``.

The implementation lives in :mod:`ssmlens.interp.training` (config, schedule, data,
evaluate, checkpointing, loop); this module re-exports it.
"""

from ssmlens.interp.training import (
    ConfigError,
    RunDir,
    TrainConfig,
    Trainer,
    TrainResult,
    evaluate,
    load_config,
    resolve_checkpoint,
    train,
)

__all__ = [
    "ConfigError",
    "RunDir",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "evaluate",
    "load_config",
    "resolve_checkpoint",
    "train",
]
