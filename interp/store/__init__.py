"""The run store (DESIGN §6): one zarr v3 group per run, on a local disk or any fsspec URL.

Writing::

    from ssmlens.interp.store import create_run, open_run, list_runs

    with create_run("runs/mamba-ar", config) as w:      # refuses to clobber a run, and
        w.write_batch(batch)                            # a second writer (RunLockedError)
        w.write_cache(cache)                            # {hook name: tensor} / ActivationCache
        for part in batches:                            # or stream along the batch axis
            w.append("blocks.0.mixer.hook_delta", delta)  # on the store when it returns
        w.write_result("patching/resid_pre", scores, ("layer", "pos"),
                       coords={"layer": [0, 1], "pos": list(range(64))})
        w.write_table("probe_scores", df)
        w.set_metrics(loss=0.12, acc=0.98)
    # leaving the block normally marks the run complete; an exception leaves it incomplete

Reading::

    run = open_run("runs/mamba-ar")                     # IncompleteRunError if not finished
    run.config, run.metrics, run.is_complete
    run.batch()                                         # TaskBatch
    run.cache["blocks.0.mixer.hook_delta"][0, 5:9]      # reads only those chunks -> Tensor
    run.result("patching/resid_pre")                    # xarray.DataArray
    run.table("probe_scores")                           # pandas.DataFrame
    list_runs("runs")                                   # [RunInfo(...), ...]

The layout on disk is described in ``ssmlens.interp.store.layout``.
"""

from ssmlens.interp.store.errors import (
    CorruptRunError,
    IncompleteRunError,
    MissingEntryError,
    NotARunError,
    RunClosedError,
    RunExistsError,
    RunLockedError,
    RunNotFoundError,
    StaleLockWarning,
    StoreError,
    UnwritableRunError,
)
from ssmlens.interp.store.lazy import CacheView, LazyArray
from ssmlens.interp.store.listing import RunInfo, list_runs
from ssmlens.interp.store.reader import Run
from ssmlens.interp.store.run import check_creatable, create_run, open_run
from ssmlens.interp.store.writer import RunWriter

__all__ = [
    "CacheView",
    "CorruptRunError",
    "IncompleteRunError",
    "LazyArray",
    "MissingEntryError",
    "NotARunError",
    "Run",
    "RunClosedError",
    "RunExistsError",
    "RunLockedError",
    "RunInfo",
    "RunNotFoundError",
    "RunWriter",
    "StaleLockWarning",
    "StoreError",
    "UnwritableRunError",
    "check_creatable",
    "create_run",
    "list_runs",
    "open_run",
]
