"""``Cell`` (one independent unit of a study) and ``CellOutcome`` (what became of it).

A cell is a module-level function and small picklable arguments: the same object runs
in the coordinator's process (``engine="local"``) or as a Ray task on any host
(``engine="ray"``). A cell writes its big outputs itself (its own run store, its own
checkpoint directory) and returns only something small: a dict of numbers, a few table
rows, the URL of the run it wrote.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal


class EngineError(RuntimeError):
    """A study's cells cannot be run as asked (duplicate keys, resources no worker has)."""


@dataclass(frozen=True)
class Cell:
    """One independent unit of a study, run as ``fn(**kwargs)``.

    key: unique within the study and stable across re-runs (resume and logs use it).
    fn: a module-level function (picklable by reference). kwargs: small picklable
    arguments (paths, configs, specs), never tensors. gpus / cpus: the share of a GPU /
    of CPU cores the cell needs (e.g. 0.25 GPU for a small model; 0 on the CPU).
    """

    key: str
    fn: Callable[..., Any]
    kwargs: dict = field(default_factory=dict)
    gpus: float = 0.0
    cpus: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise EngineError(f"a cell's key must be a non-empty string, got {self.key!r}")
        if not callable(self.fn):
            raise EngineError(f"cell {self.key!r}: fn must be callable, got {type(self.fn).__name__}")
        for name in ("gpus", "cpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise EngineError(f"cell {self.key!r}: {name} must be a number >= 0, got {value!r}")


@dataclass
class CellOutcome:
    """What became of a cell: ``status`` "done" with ``result`` (what ``fn`` returned),
    or "failed" with ``error`` (the last attempt's exception, one line, plus its
    traceback in ``detail``). ``attempts``: how many times it ran; ``seconds``: the
    wall time of its last attempt; ``earlier_errors``: the one-line errors of the
    attempts before the last (a cell that succeeded, or was skipped, on a retry still
    says why it was retried)."""

    key: str
    status: Literal["done", "failed"]
    result: Any = None
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0
    detail: str | None = None
    earlier_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "done"


def error_line(e: BaseException) -> str:
    """``Type: message`` on one line (the first line of a multi-line message)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def attempt(fn: Callable[..., Any], kwargs: dict) -> tuple[str, Any, str | None, float]:
    """Call ``fn(**kwargs)`` once: ``("done", result, None, seconds)`` or ``("failed",
    one-line error, traceback, seconds)``. Exceptions (not KeyboardInterrupt or
    SystemExit) are caught so that a failing cell never stops the study."""
    t0 = time.perf_counter()
    try:
        result = fn(**kwargs)
    except Exception as e:
        return "failed", error_line(e), traceback.format_exc(), time.perf_counter() - t0
    return "done", result, None, time.perf_counter() - t0
