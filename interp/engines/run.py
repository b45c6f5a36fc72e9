"""``run_cells``: run a study's cells on an engine, with one progress bar, into outcomes.

    outcomes = run_cells(cells, engine="ray", address="auto", gpus_per_task=0.25, retries=2,
                         on_result=write_it_down)

Every engine runs the same cell functions on the same arguments, so it gives the same
numbers; they differ only in where the cells run. ``on_result(outcome)`` is called in
this process (the coordinator) as each cell finishes, in finishing order, so a caller
streams results to disk as they come; the returned dict is in the cells' order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ssmlens.interp.engines.cells import Cell, CellOutcome, EngineError

ENGINES = ("local", "ray")


def run_cells(
    cells: Iterable[Cell],
    *,
    engine: str = "local",
    address: str | None = None,
    gpus_per_task: float | None = None,
    retries: int = 1,
    progress: bool = True,
    desc: str = "cells",
    on_result: Callable[[CellOutcome], None] | None = None,
) -> dict[str, CellOutcome]:
    """Run every cell; returns ``{key: CellOutcome}`` in the cells' order.

    engine: "local" (in this process, one after another) or "ray" (a Ray task per cell;
    ``address``: None for a local Ray, "auto" or "HOST:PORT" for a cluster).
    gpus_per_task: overrides every cell's ``gpus`` (Ray only; e.g. 0.25 puts four cells on
    a GPU). retries: how often a failed cell is run again before it is recorded as
    failed; a failed cell never stops the others. progress: one tqdm bar over all cells.
    """
    from tqdm.auto import tqdm

    cells = list(cells)
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; valid engines: {', '.join(ENGINES)}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise EngineError(f"retries must be an integer >= 0, got {retries!r}")
    if gpus_per_task is not None and (isinstance(gpus_per_task, bool) or gpus_per_task < 0):
        raise EngineError(f"gpus_per_task must be a number >= 0, got {gpus_per_task!r}")
    keys = [c.key for c in cells]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise EngineError(f"cell keys must be unique; repeated: {dup[:5]}")

    outcomes: dict[str, CellOutcome] = {}
    bar = tqdm(total=len(cells), desc=desc, disable=not progress or not cells, dynamic_ncols=True, unit="cell")
    failed = 0

    def report(outcome: CellOutcome) -> None:
        nonlocal failed
        outcomes[outcome.key] = outcome
        if on_result is not None:
            on_result(outcome)
        if not outcome.ok:
            failed += 1
            bar.write(f"{desc}: cell {outcome.key} failed after {outcome.attempts} attempt(s): {outcome.error}")
        elif outcome.earlier_errors:  # done on a retry: say what the earlier attempts raised
            bar.write(f"{desc}: cell {outcome.key} was retried after: {outcome.earlier_errors[-1]}")
        bar.set_postfix_str(f"{outcome.key}" + (f", {failed} failed" if failed else ""), refresh=False)
        bar.update()

    try:
        if cells and engine == "local":
            from ssmlens.interp.engines.local import run_local

            run_local(cells, retries=retries, report=report)
        elif cells:
            from ssmlens.interp.engines.ray_engine import run_ray

            run_ray(cells, address=address, gpus_per_task=gpus_per_task, retries=retries, report=report)
    finally:
        bar.close()
    return {k: outcomes[k] for k in keys if k in outcomes}
