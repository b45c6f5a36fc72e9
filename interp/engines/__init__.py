"""Execution engines (DESIGN §7): a study is a set of independent cells; an engine runs them.

    from ssmlens.interp.engines import Cell, run_cells

    cells = [Cell(key=f"lr={lr}", fn=train_one, kwargs={"lr": lr, "out": f"runs/g/{lr}"}, gpus=0.25)
             for lr in (1e-3, 3e-3)]
    outcomes = run_cells(cells, engine="ray", retries=2, on_result=lambda o: print(o.key, o.status))

- ``cells``: ``Cell`` (a module-level function, small picklable kwargs, its GPU and CPU
  share) and ``CellOutcome`` (done with a small result, or failed with the error).
- ``local``: every cell in this process, one after another (``engine="local"``, default).
- ``ray_engine``: each cell a Ray task (``engine="ray"``), on a local Ray or a cluster
  (``address="auto"`` / ``"HOST:PORT"``); Ray is an optional extra, ``ssmlens[ray]``.
- ``run``: ``run_cells``, the one entry point, with one tqdm bar over all cells.
- ``resume``: where a cell's own run store lives (``cell_url``) and whether it is done
  (``finished_run``), so a re-run of the same study computes only the missing cells.
- ``cli``: the ``--engine/--address/--gpus-per-task/--retries`` flags of the study commands.

One writer per run store: a cell writes only its own run (or returns rows), and the
coordinator, the one process that calls ``run_cells``, is the only writer of the study's
run. A failed cell (it raised, or its worker died) is retried, then recorded as failed;
the others go on.
"""

from ssmlens.interp.engines.cells import Cell, CellOutcome, EngineError
from ssmlens.interp.engines.resume import (
    cell_url, cells_root, finished_run, interrupted_run, safe_name, same_config,
)
from ssmlens.interp.engines.run import ENGINES, run_cells

__all__ = [
    "ENGINES", "Cell", "CellOutcome", "EngineError", "cell_url", "cells_root", "finished_run", "interrupted_run",
    "run_cells", "safe_name", "same_config",
]
