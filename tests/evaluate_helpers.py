"""Helpers of tests/test_evaluate_ray.py that Ray workers import (the tests put this folder
on their PYTHONPATH): a suite cell that records which worker process ran it, and can
hang mid-training so that the test kills that worker at a known point."""

from __future__ import annotations

import os
import time
from pathlib import Path


def pid_then_cell(**kwargs):
    """The suite's cell (``cell_task``), after writing this worker's pid to
    ``<out>/../markers/<key>.pid`` (first attempt) or ``<key>.again`` (a retry). When
    ``markers/stall-<key>`` exists, the first attempt hangs after its training's first
    checkpoint is complete (until it is killed)."""
    from ssmlens.interp.training.checkpointing import RunDir
    from ssmlens.probes.evaluation.cell import cell_task

    markers = Path(kwargs["out"]).parent / "markers"
    key = kwargs["spec"]["key"]
    first = markers / f"{key}.pid"
    if first.exists():
        (markers / f"{key}.again").write_text(str(os.getpid()))
    else:
        first.write_text(str(os.getpid()))
        if (markers / f"stall-{key}").exists():
            save = RunDir.save_checkpoint

            def save_then_hang(self, *args, **kw):
                path = save(self, *args, **kw)
                (markers / f"{key}.stalled").write_text(path.name)
                time.sleep(300)
                return path

            RunDir.save_checkpoint = save_then_hang  # this worker process only; it is killed
    return cell_task(**kwargs)
