"""The local engine: every cell in this process, one after another (today's behaviour).

Arguments are passed as they are (nothing is pickled), so a cell may hold in-memory
objects (a model instance in an ``AblationStudy``); a failed cell is run again up to
``retries`` times, then recorded as failed and the study goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ssmlens.interp.engines.cells import Cell, CellOutcome, attempt


def run_local(cells: Sequence[Cell], *, retries: int, report: Callable[[CellOutcome], None]) -> None:
    """Run ``cells`` in order; ``report(outcome)`` as each one finishes."""
    for cell in cells:
        errors: list[str] = []  # the failed attempts' one-line errors
        for n in range(1, retries + 2):
            status, value, detail, seconds = attempt(cell.fn, cell.kwargs)
            if status == "done":
                report(CellOutcome(cell.key, "done", result=value, attempts=n, seconds=seconds,
                                   earlier_errors=errors))
                break
            if n == retries + 1:
                report(CellOutcome(cell.key, "failed", error=value, attempts=n, seconds=seconds, detail=detail,
                                   earlier_errors=errors))
            errors = [*errors, value]
