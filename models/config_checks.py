"""Checks every model config shares (one place for the messages)."""

from __future__ import annotations

from typing import Any

SIZE_FIELDS = ("vocab_size", "d_model", "n_layers")


def check_sizes(cfg: Any, names: tuple[str, ...] = SIZE_FIELDS) -> None:
    """A ValueError naming the first size field of ``cfg`` below 1."""
    for name in names:
        if int(getattr(cfg, name)) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
