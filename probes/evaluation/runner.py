"""A small local runner of independent cells, with the interface of
``ssmlens.interp.engines.run_cells`` (interfaces.md, issue 17), so that the suite can
move to that engine (and Ray) by swapping one function (``suite_run.execute``).

A ``Cell`` is a module-level function and small picklable keyword arguments; it
writes its big outputs itself and returns a small result. ``run_cells`` runs them
and returns ``{key: CellOutcome}``; a cell that raises an ``Exception`` is recorded as
``failed`` with its error and the others go on. ``KeyboardInterrupt`` stops the run
(cells already finished keep their outputs; the caller resumes by skipping them).

Engines here: ``"local"`` runs the cells one after another in this process;
``"processes"`` runs them in ``workers`` spawned processes (several small trainings
side by side on one GPU, or on several CPU cores).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm


@dataclass(frozen=True)
class Cell:
    key: str  # unique, stable across re-runs
    fn: Callable  # a module-level function, called as fn(**kwargs)
    kwargs: dict = field(default_factory=dict)  # small and picklable
    gpus: float = 0.0  # the GPU share the cell needs (an engine's scheduling hint)
    cpus: float = 1.0


@dataclass
class CellOutcome:
    key: str
    status: str  # "done" | "failed"
    result: Any = None
    error: str | None = None


def _call(cell: Cell, retries: int) -> CellOutcome:
    """Run one cell; an exception becomes a failed outcome (after ``retries`` more tries)."""
    error = None
    for _ in range(max(0, int(retries)) + 1):
        try:
            return CellOutcome(cell.key, "done", cell.fn(**cell.kwargs))
        except Exception as e:  # a failed cell is recorded; the study goes on
            lines = traceback.format_exception(type(e), e, e.__traceback__)
            error = f"{type(e).__name__}: {e}\n" + "".join(lines[-6:])
    return CellOutcome(cell.key, "failed", None, error)


def _pin_gpu(counter, devices: int) -> None:
    """Process-pool initializer: worker i sees only GPU i mod ``devices`` (set before torch
    initializes CUDA, so its "cuda" is that GPU)."""
    import os

    with counter.get_lock():
        index = counter.value
        counter.value += 1
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index % devices)


def run_cells(cells: Sequence[Cell], *, engine: str = "local", address: str | None = None,
              gpus_per_task: float | None = None, retries: int = 0, progress: bool = True,
              desc: str = "cells", on_result: Callable[[CellOutcome], None] | None = None,
              workers: int = 1, devices: int | None = None,
              deadline_s: float | None = None) -> dict[str, CellOutcome]:
    """Run every cell; ``on_result(outcome)`` is called here as each one finishes.

    engine: "local" (in this process, in order) or "processes" (``workers`` spawned
    processes). address / gpus_per_task: accepted for the interface of
    ``ssmlens.interp.engines.run_cells``; a local runner has no cluster to address and
    no GPU scheduler (``Cell.gpus`` is not enforced). retries: extra tries of a cell that
    raised. devices: with "processes", spread the workers over this many GPUs (worker i
    sees GPU i mod devices), for a host with several. deadline_s: no cell starts later
    than this many seconds after the call (cells running then finish; with "processes"
    the clock is read as cells finish, so a worker freed just then may still start one);
    cells not started are left out of the returned outcomes.
    """
    import time

    stop_at = None if deadline_s is None else time.monotonic() + float(deadline_s)
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"cell keys must be unique; repeated: {dup}")
    if engine not in ("local", "processes"):
        raise ValueError(f"unknown engine {engine!r}; this runner has 'local' and 'processes' "
                         "(Ray: ssmlens.interp.engines.run_cells)")
    if address is not None:
        raise ValueError("address names a Ray cluster; the local runner has none")
    outcomes: dict[str, CellOutcome] = {}
    bar = tqdm(total=len(cells), desc=desc, disable=not progress, unit="cell")

    def finished(outcome: CellOutcome) -> None:
        outcomes[outcome.key] = outcome
        bar.update()
        failed = sum(o.status == "failed" for o in outcomes.values())
        if failed:
            bar.set_postfix_str(f"{failed} failed", refresh=True)
        if on_result is not None:
            on_result(outcome)

    try:
        if engine == "local" or workers <= 1 or len(cells) <= 1:
            for cell in cells:
                if stop_at is not None and time.monotonic() >= stop_at:
                    break
                bar.set_postfix_str(cell.key, refresh=True)
                finished(_call(cell, retries))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            ctx = mp.get_context("spawn")
            pin = dict(initializer=_pin_gpu, initargs=(ctx.Value("i", 0), int(devices))) if devices else {}
            with ProcessPoolExecutor(max_workers=int(workers), mp_context=ctx, **pin) as pool:
                futures = {pool.submit(_call, cell, retries): cell.key for cell in cells}
                try:
                    for future in as_completed(futures):
                        if stop_at is not None and time.monotonic() >= stop_at:
                            for f in futures:
                                f.cancel()  # those not started yet; running ones finish
                        if future.cancelled():
                            continue
                        try:
                            finished(future.result())
                        except Exception as e:  # the worker died (killed, out of memory)
                            finished(CellOutcome(futures[future], "failed", None,
                                                 f"worker process failed: {type(e).__name__}: {e}"))
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
    return {k: outcomes[k] for k in keys if k in outcomes}
