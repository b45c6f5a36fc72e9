"""Activation patching between a clean and a corrupted run, over hooks × layers × positions.

``patching_sweep(model, clean, corrupted, "resid_pre,ssm_state", "all")`` patches, for
every hook site and every unit of positions, the activation of one run into the
other and measures the answer at the query positions (``ssmlens.probes.metrics``):

- ``direction="denoise"`` (default): run the corrupted input, write the clean
  activation; ``restored`` near 1 means the site carries what the corruption removed
  (sufficiency).
- ``direction="noise"``: run the clean input, write the corrupted activation;
  ``restored`` near 0 means the site is necessary.

Sites are hook names (short names expanded over layers, ``ssmlens.probes.positions``);
an edit of ``mixer.hook_ssm_state`` propagates to later positions (DESIGN §3) and
``memory.hook_write`` edits which tokens B'MOJO keeps. All patches run batched
(``ssmlens.probes.batched``), each from the block and position it patches on (a resumed
forward from the cached unpatched run: ``ssmlens.probes.resumed``); ``patching_sweep_reference``
runs one full forward per patch and is what the batched sweep must equal.

Result: ``xarray.DataArray`` with dims ``(metric, hook, layer, pos)`` — or ``role``
instead of ``pos`` for role units, plus ``batch`` with ``per_example=True``. ``hook``
holds layer-free kinds (``hook_resid_pre``, ``mixer.hook_ssm_state``), ``layer`` the
block index (-1 for hooks outside the blocks); (hook, layer) pairs the model lacks
are NaN. ``attrs`` hold the clean and corrupted baselines (``clean_p_answer``, …),
the direction, the number of examples, position labels, the engine's counts, and per
restored fraction its ``<ratio>_min_gap`` and ``<ratio>_excluded`` (examples without a
ratio because the corruption barely moved them: ``ssmlens.probes.metrics``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.probes.batched import run_interventions, site_pos_axis
from ssmlens.probes.metrics import (
    METRICS, AnswerSpec, answer_spec, baseline, exclusion_attrs, query_logits, row_metrics, summarize,
)
from ssmlens.probes.positions import HookSite, PositionSpec, Units, expand_hooks, position_labels, resolve_positions

Direction = Literal["denoise", "noise"]


def patching_sweep(
    model,
    clean: TaskBatch,
    corrupted: TaskBatch,
    hooks: str | Sequence[str],
    positions: PositionSpec = "all",
    *,
    direction: Direction = "denoise",
    layers: Sequence[int] | None = None,
    query_index: int | None = None,
    alt_tokens: Tensor | None = None,
    per_example: bool = False,
    chunk_rows: int | None = None,
    memory_mb: float = 32,
    causal: bool = True,
    skip_noop: bool = True,
    resume: bool = True,
    progress: bool = True,
) -> xr.DataArray:
    """Patch every (hook site, position unit); batched. See the module docstring.

    clean, corrupted: aligned TaskBatches (``ssmlens.interp.tasks.corrupt``). hooks: names
    or short names; layers: keep these blocks. positions: ``ssmlens.probes.positions`` spec.
    chunk_rows / memory_mb: rows per forward (default: what fits ``memory_mb``; the
    small default keeps a chunk in a CPU's caches, which measured fastest — raise it
    on a GPU).
    causal / skip_noop / resume: exact shortcuts of ``ssmlens.probes.batched`` (turn off for
    a non-causal model). Returns the labelled result array.
    """
    setup = SweepSetup(model, clean, corrupted, hooks, positions, direction, layers, query_index, alt_tokens,
                       references=False)

    def prepare(base_q: Tensor, source_q: Tensor | None) -> None:
        # References from the engine's own unpatched runs: no extra forward, and
        # "patching nothing" reproduces the base reference bit for bit.
        if source_q is None:
            setup.set_references()
        else:
            setup.set_references(*((source_q, base_q) if direction == "denoise" else (base_q, source_q)))

    res = run_interventions(
        model, setup.base.tokens, setup.source.tokens, setup.spec, setup.sites, setup.units, setup.units,
        setup.reduce, prepare=prepare, chunk_rows=chunk_rows, memory_mb=memory_mb, causal=causal,
        skip_noop=skip_noop, resume=resume, progress=progress)
    return setup.result(res.rows, per_example, res.stats)


def patching_sweep_reference(
    model,
    clean: TaskBatch,
    corrupted: TaskBatch,
    hooks: str | Sequence[str],
    positions: PositionSpec = "all",
    *,
    direction: Direction = "denoise",
    layers: Sequence[int] | None = None,
    query_index: int | None = None,
    alt_tokens: Tensor | None = None,
    per_example: bool = False,
    progress: bool = False,
) -> xr.DataArray:
    """The same sweep with one full forward per (hook site, unit), nothing skipped:
    the reference that ``patching_sweep`` must equal, and the benchmark's baseline."""
    setup = SweepSetup(model, clean, corrupted, hooks, positions, direction, layers, query_index, alt_tokens)
    n = len(clean)
    names = sorted({s.name for s in setup.sites})
    with torch.no_grad():
        _, src_cache = model.run_with_cache(setup.source.tokens, names_filter=names)
    rows: dict[str, Tensor] = {}
    total = len(setup.sites) * len(setup.units)
    bar = tqdm(total=total, desc="patching (reference)", disable=not progress, leave=False)
    for i, site in enumerate(setup.sites):
        for u, idx in enumerate(setup.units.index):
            hook = single_patch_hook(src_cache[site.name], idx, site_pos_axis(site, src_cache[site.name]))
            with torch.no_grad():
                logits = model.run_with_hooks(setup.base.tokens, fwd_hooks=[(site.name, hook)])
            got = setup.reduce(query_logits(logits, setup.spec.query), torch.arange(n))
            for k, v in got.items():
                rows.setdefault(k, torch.full((len(setup.sites), len(setup.units), n), float("nan"),
                                              dtype=torch.float64))[i, u] = v
            bar.update()
    bar.close()
    return setup.result(rows, per_example, {"forwards": total})


def single_patch_hook(source: Tensor, index: Tensor, axis: int = 1):
    """A forward hook writing ``source[b, index[b, j]]`` into the activation at
    ``index[b, j]`` for every example b (``index`` int64 ``[batch, k]``, -1 ignored)."""
    valid = index >= 0
    rows = torch.arange(index.shape[0])[:, None].expand_as(index)[valid]
    pos = index[valid]

    def hook(act: Tensor, hook) -> Tensor:
        out = act.movedim(axis, 1).clone()
        out[rows, pos] = source.movedim(axis, 1)[rows, pos].to(out.dtype)
        return out.movedim(1, axis)

    return hook


class SweepSetup:
    """What both sweeps share: sites, units, metric spec, reference runs, assembly."""

    def __init__(self, model, clean, corrupted, hooks, positions, direction, layers, query_index, alt_tokens,
                 references: bool = True):
        if direction not in ("denoise", "noise"):
            raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
        if clean.tokens.shape != corrupted.tokens.shape:
            raise ValueError(f"clean {tuple(clean.tokens.shape)} and corrupted {tuple(corrupted.tokens.shape)} "
                             "batches must have the same shape (positions are patched one to one)")
        self.model, self.clean, self.corrupted, self.direction = model, clean, corrupted, direction
        self.base, self.source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
        self.sites: list[HookSite] = expand_hooks(model, hooks, layers)
        self.units: Units = resolve_positions(positions, self.base)
        self.positions = positions
        self.spec: AnswerSpec = answer_spec(clean, corrupted, query_index=query_index, alt_tokens=alt_tokens)
        if references:
            self.set_references()

    def set_references(self, clean_q: Tensor | None = None, corr_q: Tensor | None = None) -> None:
        """Metrics of the unpatched clean and corrupted runs (computed when not given)."""
        with torch.no_grad():
            if clean_q is None:
                clean_q = query_logits(self.model(self.clean.tokens), self.spec.query)
            if corr_q is None:
                corr_q = query_logits(self.model(self.corrupted.tokens), self.spec.query)
        self.clean_logp = clean_q.double().log_softmax(-1)
        all_ex = torch.arange(len(self.clean))
        self.refs = {"clean": self.reduce(clean_q, all_ex), "corrupted": self.reduce(corr_q, all_ex)}

    def reduce(self, logits_q: Tensor, ex: Tensor) -> dict[str, Tensor]:
        return row_metrics(logits_q, self.spec.answer[ex], self.spec.alt[ex], self.clean_logp[ex])

    def result(self, rows: dict[str, Tensor], per_example: bool, stats: dict) -> xr.DataArray:
        summary = summarize(rows, self.refs["clean"], self.refs["corrupted"], per_example=per_example)
        attrs = {
            "kind": "activation_patching",
            "direction": self.direction,
            "n_examples": len(self.clean),
            "task": self.clean.task,
            "positions": repr(self.positions),
            "hook_names": [s.name for s in self.sites],
            **{f"clean_{k}": v for k, v in baseline(self.refs["clean"]).items()},
            **{f"corrupted_{k}": v for k, v in baseline(self.refs["corrupted"]).items()},
            **{f"engine_{k}": int(v) for k, v in stats.items()},
            **exclusion_attrs(self.refs["clean"], self.refs["corrupted"], per_example),
        }
        if self.units.dim == "pos":
            labels = position_labels(self.base)
            attrs["pos_labels"] = [labels[p] for p in self.units.labels]
        return assemble(summary, self.sites, self.units, attrs, per_example)


def assemble(values: dict[str, Tensor], sites: Sequence[HookSite], units: Units, attrs: dict,
             per_example: bool = False, metrics: Sequence[str] | None = None) -> xr.DataArray:
    """``{metric: [site, unit(, batch)]}`` -> DataArray ``(metric, hook, layer, unit dim(, batch))``."""
    metrics = list(metrics or [m for m in METRICS if m in values] + [m for m in values if m not in METRICS])
    kinds = list(dict.fromkeys(s.kind for s in sites))
    layers = sorted({s.layer for s in sites})
    extra = values[metrics[0]].shape[2:] if per_example else ()
    out = np.full((len(metrics), len(kinds), len(layers), len(units), *extra), np.nan)
    for i, s in enumerate(sites):
        k, l = kinds.index(s.kind), layers.index(s.layer)
        for m, name in enumerate(metrics):
            out[m, k, l] = values[name][i].double().numpy()
    dims = ["metric", "hook", "layer", units.dim] + (["batch"] if per_example else [])
    coords = {"metric": metrics, "hook": kinds, "layer": layers, units.dim: units.labels}
    if per_example:
        coords["batch"] = list(range(extra[0]))
    return xr.DataArray(out, dims=dims, coords=coords, attrs=attrs)
