"""Activation patching over prompt shards: one engine cell per shard, merged exactly.

A large prompt set is split into ``shards`` contiguous slices of the same sampled batch.
Each shard is a cell (``ssmlens.interp.engines``) that runs ``patching_sweep`` on its
examples and writes its own run store at ``cell_url(out, "shard-i-of-k")``: its batch, the
per-example results and, per (metric, hook, layer, unit), the sum and count of each
per-example metric over its examples (``shard/row_sum``, ``shard/row_count``; the clean
and corrupted references in ``shard/ref_sum``, ``shard/ref_count``). The coordinator
reads only those sums (their size does not grow with the number of prompts), adds them
and computes the batch means and restored fractions exactly as ``summarize`` does over
the whole batch, so a sharded sweep equals the unsharded one (up to float summation
order and BLAS blocking, ~1e-7 relative; the tests check it).

A shard whose run is complete and made from the same settings is not run again, so a
re-run of an interrupted study computes only the missing shards.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from ssmlens.probes.metrics import METRICS, ROW_METRICS, restored_fraction

REFS = ("clean", "corrupted")


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous [start, stop) slices of ``n`` examples, sizes differing by at most 1."""
    if shards < 1 or shards > n:
        raise ValueError(f"--shards must be between 1 and the number of examples ({n}), got {shards}")
    edges = np.linspace(0, n, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def sample_pair(task: str, settings: dict, n: int, seed: int, corruption: str):
    """The clean batch and its corruption, exactly as ``ssmlens patch`` samples them."""
    from ssmlens.interp.tasks import corrupt, make_task

    clean = make_task(task, **settings).sample(n, seed)
    return clean, corrupt(clean, corruption, seed + 1)


def _sum_count(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    ok = ~np.isnan(values)
    return np.where(ok, values, 0.0).sum(axis), ok.sum(axis).astype(np.float64)


def patch_shard(checkpoint: str, task: str, settings: dict, n: int, seed: int, corruption: str, hooks: list,
                positions, direction: str, memory_mb: float, start: int, stop: int, url: str, config: dict) -> dict:
    """Engine cell: patch examples [start, stop) and write the shard's run at ``url``.
    Returns ``{"url", "start", "stop"}``."""
    from ssmlens.interp.store import create_run
    from ssmlens.probes.patching import SweepSetup, patching_sweep
    from ssmlens.probes.positions import expand_hooks
    from ssmlens.probes.study import load_for_study

    model, _, _, _ = load_for_study(checkpoint, task, settings)
    clean, corr = sample_pair(task, settings, n, seed, corruption)
    rows = torch.arange(start, stop)
    clean, corr = clean.select(rows), corr.select(rows)
    per_ex = patching_sweep(model, clean, corr, hooks, positions, direction=direction, memory_mb=memory_mb,
                            per_example=True, progress=False)
    refs = SweepSetup(model, clean, corr, hooks, positions, direction, None, None, None).refs
    rows_da = per_ex.sel(metric=list(ROW_METRICS))
    row_sum, row_count = _sum_count(rows_da.values, axis=-1)
    ref_values = np.stack([np.stack([refs[r][m].double().numpy() for m in ROW_METRICS]) for r in REFS])
    ref_sum, ref_count = _sum_count(ref_values, axis=-1)
    kinds, layers = list(per_ex["hook"].values), list(per_ex["layer"].values)
    present = np.zeros((len(kinds), len(layers)), dtype=bool)  # the (hook, layer) sites the model has
    for s in expand_hooks(model, hooks):
        present[kinds.index(s.kind), layers.index(s.layer)] = True
    unit = per_ex.dims[3]
    coords = {"metric": list(ROW_METRICS), "hook": kinds, "layer": layers, unit: per_ex[unit].values.tolist()}
    with create_run(url, config, overwrite=True) as w:  # a shard's run is written by its cell only
        w.write_batch(clean)
        w.write_result("corrupted/tokens", corr.tokens, ("batch", "pos"))
        w.write_result("patching/per_example", per_ex)
        w.write_result("shard/row_sum", row_sum, ("metric", "hook", "layer", unit), coords)
        w.write_result("shard/row_count", row_count, ("metric", "hook", "layer", unit), coords)
        ref_coords = {"ref": list(REFS), "metric": list(ROW_METRICS)}
        w.write_result("shard/ref_sum", ref_sum, ("ref", "metric"), ref_coords)
        w.write_result("shard/ref_count", ref_count, ("ref", "metric"), ref_coords)
        w.write_result("shard/present", present, ("hook", "layer"), {"hook": kinds, "layer": layers})
        w.set_metrics(start=start, stop=stop, **{k: v for k, v in per_ex.attrs.items() if k.startswith("engine_")})
    return {"url": url, "start": start, "stop": stop}


def merge_shards(urls: list[str], base_batch) -> xr.DataArray:
    """The sweep over all shards' examples, from their sums: dims ``(metric, hook, layer,
    pos | role)`` and attrs as ``patching_sweep`` gives for the whole batch (``engine_*``
    counts are summed over the shards)."""
    from ssmlens.interp.store import open_run
    from ssmlens.probes.positions import position_labels

    row_sum = row_count = ref_sum = ref_count = None
    engine: dict[str, int] = {}
    first = None
    for url in urls:
        run = open_run(url)
        parts = [run.result(f"shard/{k}") for k in ("row_sum", "row_count", "ref_sum", "ref_count")]
        if first is None:
            first, present = parts[0], run.result("shard/present").values.astype(bool)
            row_sum, row_count, ref_sum, ref_count = (p.values.copy() for p in parts)
        else:
            for acc, p in zip((row_sum, row_count, ref_sum, ref_count), parts):
                acc += p.values
        for k, v in run.metrics.items():
            if k.startswith("engine_"):
                engine[k] = engine.get(k, 0) + int(v)
    # as metrics._nanmean: the mean over examples with a value (0 when none has one)
    mean = torch.from_numpy(row_sum / np.maximum(row_count, 1.0))
    ref_mean = torch.from_numpy(ref_sum / np.maximum(ref_count, 1.0))
    ix = {m: i for i, m in enumerate(ROW_METRICS)}
    clean, corr = ref_mean[0], ref_mean[1]
    values = {
        "restored": restored_fraction(mean[ix["p_answer"]], clean[ix["p_answer"]], corr[ix["p_answer"]]),
        "restored_logit_diff": restored_fraction(mean[ix["logit_diff"]], clean[ix["logit_diff"]],
                                                 corr[ix["logit_diff"]]),
        **{m: mean[ix[m]] for m in ROW_METRICS},
    }
    out = np.stack([values[m].numpy() for m in METRICS])
    out[:, ~present] = np.nan  # (hook, layer) pairs the model lacks, as ``assemble`` leaves them
    unit = first.dims[3]
    shard0 = open_run(urls[0]).result("patching/per_example")
    attrs = {k: v for k, v in shard0.attrs.items() if not k.startswith(("clean_", "corrupted_", "engine_"))}
    attrs["n_examples"] = int(len(base_batch))
    attrs.update({f"clean_{m}": float(clean[ix[m]]) for m in ROW_METRICS})
    attrs.update({f"corrupted_{m}": float(corr[ix[m]]) for m in ROW_METRICS})
    attrs.update(engine)
    if unit == "pos":
        labels = position_labels(base_batch)
        attrs["pos_labels"] = [labels[int(p)] for p in first[unit].values]
    coords = {"metric": list(METRICS), "hook": first["hook"].values.tolist(), "layer": first["layer"].values.tolist(),
              unit: first[unit].values.tolist()}
    return xr.DataArray(out, dims=("metric", "hook", "layer", unit), coords=coords, attrs=attrs)


def sharded_patching_sweep(checkpoint, task: str, settings: dict, n: int, seed: int, corruption: str, hooks: list,
                           positions, *, out: str, shards: int, direction: str = "denoise", memory_mb: float = 32,
                           engine: dict | None = None, progress: bool = True):
    """Run (or resume) the shards of a patching sweep on an engine and merge them.

    Returns ``(sweep, shard_urls, failed)``: the merged DataArray (None when a shard
    failed), the URL of each shard's run, and ``[(key, error)]`` of failed shards.
    """
    import os

    from ssmlens.interp.engines import Cell, cell_url, finished_run, run_cells

    checkpoint = os.path.abspath(os.path.expanduser(str(checkpoint))) if "://" not in str(checkpoint) else checkpoint
    common = {"checkpoint": checkpoint, "task": task, "settings": dict(settings), "n": n, "seed": seed,
              "corruption": corruption, "hooks": list(hooks), "positions": positions, "direction": direction}
    cells, urls = [], []
    for i, (start, stop) in enumerate(shard_bounds(n, shards)):
        key = f"shard-{i:05d}-of-{shards:05d}"
        url = cell_url(out, key)
        config = {"kind": "patching_shard", **common, "start": start, "stop": stop}
        urls.append(url)
        if finished_run(url, config) is None:  # resume: finished shards are not run again
            cells.append(Cell(key, patch_shard, {**common, "memory_mb": memory_mb, "start": start, "stop": stop,
                                                 "url": url, "config": config}))
    outcomes = run_cells(cells, **(engine or {}), progress=progress, desc="patching shards")
    failed = [(k, o.error) for k, o in outcomes.items() if not o.ok]
    if failed:
        return None, urls, failed
    clean, corr = sample_pair(task, settings, n, seed, corruption)
    base = corr if direction == "denoise" else clean
    return merge_shards(urls, base), urls, []
