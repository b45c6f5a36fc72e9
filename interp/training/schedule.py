"""Learning-rate schedule: linear warm-up, then cosine decay to ``lr * min_lr_ratio``.

The rate is a pure function of the step, so resuming needs only the step count
(no scheduler object to save and restore).
"""

from __future__ import annotations

import math


def lr_at(step: int, lr: float, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Warm-up rises linearly from ``lr / warmup_steps`` (step 0) to ``lr`` (step
    ``warmup_steps - 1``); the cosine then falls from ``lr`` to ``lr * min_lr_ratio`` at
    the last step and stays there for any step beyond ``total_steps``.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = lr * min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    """Apply ``lr`` to every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
