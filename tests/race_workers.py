"""Writer processes that race for run stores (tests/test_store_writers.py).

Kept out of the test module: a process started with the 'spawn' method imports its
target by module name, and pytest's importlib mode does not make test modules
importable; ``tests/`` is on sys.path (pytest's ``pythonpath``), which spawned
children inherit.
"""

from __future__ import annotations

import json
import os
import signal
import time
import warnings

ROWS_PER_APPEND = 2
APPENDS = 3


def _outcome(create, path: str, me: int, overwrite: bool):
    """(writer or None, what happened, message)."""
    import ssmlens.interp.store as store

    locked = getattr(store, "RunLockedError", store.RunExistsError)  # the unfixed store has none
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            w = create(path, {"writer": me}, overwrite=overwrite)
        except locked as e:
            return None, "locked", str(e)
        except store.RunExistsError as e:
            return None, "exists", str(e)
        except Exception as e:  # anything else is a failure of the store, recorded as such
            return None, "error", f"{type(e).__name__}: {e}"
    stale = [str(c.message) for c in caught if type(c.message).__name__ == "StaleLockWarning"]
    return w, "won", " | ".join(stale)


def _append(w, me: int, n: int = APPENDS) -> None:
    import torch

    for _ in range(n):
        w.append("rows", torch.full((ROWS_PER_APPEND, 4), float(me)))


def race(phases: list[tuple[str, int]], me: int, root: str, barrier, out: str) -> None:
    """For each ``(kind, rounds)`` of ``phases``: ``rounds`` races of every worker for
    ``<root>/<kind>-<round>``, in step through ``barrier``; one JSON record per round
    goes to ``out``.

    - ``create``: every worker calls ``create_run`` at once, no overwrite.
    - ``overwrite``: worker 0 creates the run and keeps appending to it while the
      others call ``create_run(overwrite=True)`` at once.
    - ``stale``: the run was left by a writer that died (``leave_stale_runs``; the phase
      starts once ``<root>/stale-ready`` exists); every worker calls
      ``create_run(overwrite=True)`` at once.

    Whoever got the run appends ``APPENDS`` blocks of its own number after every worker
    has tried (so they all tried while it held the run), then finishes.
    """
    from ssmlens.interp.store import create_run

    records = []
    for kind, rounds in phases:
        while kind == "stale" and not os.path.exists(f"{root}/stale-ready"):
            time.sleep(0.01)
        for r in range(rounds):
            path = f"{root}/{kind}-{r:03d}"
            mine = None
            if kind == "overwrite" and me == 0:
                mine = create_run(path, {"writer": me})
                _append(mine, me, 1)
            barrier.wait(timeout=300)
            if mine is not None:
                got, what, msg = None, "holder", ""
                _append(mine, me, 1)  # appending while the others try to overwrite
            else:
                got, what, msg = _outcome(create_run, path, me, overwrite=kind != "create")
            barrier.wait(timeout=300)  # every contender has tried: now the winners write
            for w in (mine, got):
                if w is not None:
                    _append(w, me, APPENDS - 2 if w is mine else APPENDS)  # the holder did 2 already
                    w.finish()
            records.append({"kind": kind, "round": r, "me": me, "pid": os.getpid(), "outcome": what,
                            "message": msg})
            barrier.wait(timeout=300)
    with open(out, "w") as f:
        json.dump(records, f)


def leave_stale_runs(root: str, rounds: int) -> None:
    """Start a run per round, append to it, then die by SIGKILL (no cleanup at all)."""
    from ssmlens.interp.store import create_run

    writers = []
    for r in range(rounds):
        w = create_run(f"{root}/stale-{r:03d}", {"writer": "dead"})
        _append(w, -1, 1)
        writers.append(w)
    time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)
