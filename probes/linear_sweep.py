"""Probe sweeps: one linear probe (``ssmlens.probes.linear``) per hook × layer × position.

``probe_sweep(model_or_cache, batch, hooks, target, positions)`` reads the activations
at the probed positions (from a model run or a cache), fits one probe per
hook × layer × position on one train/test split, with the control task of
``fit_probe``, and returns an ``xarray.DataArray`` with dims
``(hook, layer, position, metric)``; metric ``control_informative`` is 1 where the
control task means something and 0 where it cannot (see ``ssmlens.probes.linear``).
``sweep_table`` makes it a tidy table. Hooks, targets and positions are resolved by
``resolve_hooks``, ``target_labels`` and ``positions_index``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor

from ssmlens.interp.hook_names import dims_for, hook_layer, hook_suffix
from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.probes.linear import METRICS, UninformativeControl, _why_uninformative, fit_probe, train_test_split

# ---- where to read, and what to predict ---------------------------------------------------

_ROLE_RE = re.compile(r"^([A-Za-z_]\w*)(?:\[(-?\d+)\])?$")


def positions_index(batch: TaskBatch | None, positions, length: int) -> tuple[list, Int[Tensor, "batch k"]]:
    """Resolve a position spec to (labels, per-example positions ``[b, k]``, −1 = absent).

    ``positions``: "all" (every position), an int (negative counts from the end), a
    role name of the batch ("query": its first column; "key[3]": column 3), or a list
    of those. A ``[b, k]`` int tensor is taken as it is.
    """
    if isinstance(positions, Tensor):
        return list(range(positions.shape[1])), positions.long()
    b = len(batch) if batch is not None else None
    items = list(range(length)) if positions == "all" else (
        [positions] if isinstance(positions, (int, str)) else list(positions))
    labels, cols = [], []
    for item in items:
        if isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.lstrip("-").isdigit()):
            p = int(item)
            if not -length <= p < length:
                raise ValueError(f"position {p} out of range for sequences of length {length}")
            p %= length
            labels.append(p)
            cols.append(torch.full((b or 1,), p, dtype=torch.long))
            continue
        m = _ROLE_RE.match(str(item))
        if m is None or batch is None:
            raise ValueError(f"position {item!r}: expected an int, 'all' or a role name"
                             + ("" if batch is not None else " (role names need a TaskBatch)"))
        role = batch.role(m.group(1))
        col = int(m.group(2) or 0)
        if not -role.shape[1] <= col < role.shape[1]:
            raise ValueError(f"role {m.group(1)!r} has {role.shape[1]} columns, asked for column {col}")
        labels.append(str(item))
        cols.append(role[:, col])
    n_rows = max((len(c) for c in cols), default=b or 1)
    return labels, torch.stack([c.expand(n_rows) if len(c) == 1 else c for c in cols], 1)


def target_labels(batch: TaskBatch, target) -> Tensor:
    """Labels ``[b]`` (one per example) or ``[b, pos]`` (one per position); −1 = no label.

    ``target``: a role name ("queried_value": the token there; "key[2]"), a callable
    ``batch -> labels``, or a tensor.
    """
    if callable(target) and not isinstance(target, Tensor):
        target = target(batch)
    if isinstance(target, (Tensor, np.ndarray)):
        labels = torch.as_tensor(target).long()
    else:
        m = _ROLE_RE.match(str(target))
        if m is None:
            raise ValueError(f"target {target!r}: expected a role name, a callable or a tensor")
        labels = batch.tokens_at(m.group(1))[:, int(m.group(2) or 0)]
    if labels.shape[0] != len(batch) or labels.ndim not in (1, 2):
        raise ValueError(f"labels must be [batch] or [batch, pos] with batch={len(batch)}, got {tuple(labels.shape)}")
    return labels


# ---- activations at positions ----------------------------------------------------------------


def _pos_axis(name: str, ndim: int) -> int:
    dims = dims_for(name, ndim)
    for d in ("pos", "query_pos", "key_pos"):
        if d in dims:
            return dims.index(d)
    if ndim < 2:
        raise ValueError(f"hook {name!r} has no position axis (shape rank {ndim})")
    return 1


def gather_positions(act: Tensor, name: str, index: Int[Tensor, "batch k"]) -> Float[Tensor, "batch k features"]:
    """The activation of every example at its positions ``index`` (−1 → zeros), flattened."""
    act = torch.as_tensor(act)
    ax = _pos_axis(name, act.ndim)
    act = act.movedim(ax, 1)
    b, L = act.shape[:2]
    flat = act.reshape(b, L, -1)
    idx = index.to(flat.device).clamp(0, L - 1)
    out = flat.gather(1, idx[:, :, None].expand(-1, -1, flat.shape[-1]))
    return out.float().masked_fill((index < 0).to(out.device)[:, :, None], 0.0)


def resolve_hooks(available: Sequence[str], hooks: str | Sequence[str]) -> list[str]:
    """Hook names from a spec: full names, or kinds for every layer ("resid_pre",
    "ssm_state", "mixer.hook_delta", "attn.z"), comma-separated or a list."""
    specs = [h.strip() for h in hooks.split(",")] if isinstance(hooks, str) else list(hooks)
    out: list[str] = []
    for spec in filter(None, specs):
        if spec in available:
            found = [spec]
        else:
            parts = spec.rsplit(".", 1)
            last = parts[-1] if parts[-1].startswith("hook_") else "hook_" + parts[-1]
            want = ".".join(parts[:-1] + [last])
            found = [n for n in available if hook_suffix(n) == want or hook_suffix(n).endswith("." + want)]
        if not found:
            kinds = sorted({hook_suffix(n) for n in available})
            raise ValueError(f"no hook matches {spec!r}; hook kinds of this model: {', '.join(kinds)}")
        out += [n for n in found if n not in out]
    return out


def _collect(source, batch: TaskBatch, names: list[str], index: Tensor, batch_size: int) -> dict[str, Tensor]:
    """{hook: [b, k, features]} from a model (extracting only the probed positions) or a cache."""
    from ssmlens.interp.hooks import HookedModel

    if not isinstance(source, HookedModel):
        return {n: gather_positions(_load(source[n]), n, index) for n in names}
    parts: dict[str, list[Tensor]] = {n: [] for n in names}
    device = next(source.parameters()).device
    for start in range(0, len(batch), batch_size):
        rows = slice(start, start + batch_size)

        def grab(act, hook, rows=rows):
            parts[hook.name].append(gather_positions(act.detach(), hook.name, index[rows]).cpu())

        with torch.no_grad():
            source.run_with_hooks(batch.tokens[rows].to(device), fwd_hooks=[(n, grab) for n in names],
                                  return_type=None)
    return {n: torch.cat(v) for n, v in parts.items()}


def _load(value) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if hasattr(value, "load"):
        return value.load()
    return torch.as_tensor(np.asarray(value))


def probe_sweep(
    source, batch: TaskBatch, hooks: str | Sequence[str], target, positions="all", *,
    method: str = "ridge", control: bool = True, test_frac: float = 0.25, seed: int = 0,
    batch_size: int = 256, progress: bool = False, **fit_kw,
) -> xr.DataArray:
    """Probe accuracy per hook kind × layer × position.

    ``source``: a HookedModel (run on ``batch.tokens``; only the probed positions are
    kept) or a cache mapping hook names to ``[batch, pos, ...]`` (an
    ``ActivationCache``, a run store's ``run.cache``, a dict). ``hooks``: see
    ``resolve_hooks``; ``target``: see ``target_labels``; ``positions``: see
    ``positions_index``. One train/test split (by example) serves every probe; the
    control task uses the token at the probed position as the token type.

    Returns a DataArray with dims ``(hook, layer, position, metric)``: hook = kind
    (``hook_suffix``), layer = block index (−1 for hooks outside the blocks), position
    = the int positions, or string labels ("query", "5") when roles are among them,
    metric in ``METRICS``; NaN where a hook kind has no such layer or a probe had no data.
    """
    available = list(source.hook_dict) if hasattr(source, "hook_dict") else list(source.keys())
    names = resolve_hooks(available, hooks)
    labels_all = target_labels(batch, target)
    pos_labels, index = positions_index(batch, positions, batch.seq_len)
    index = index.expand(len(batch), -1) if index.shape[0] == 1 else index
    acts = _collect(source, batch, names, index, batch_size)
    split = train_test_split(len(batch), test_frac, seed)
    in_train = torch.zeros(len(batch), dtype=torch.bool)
    in_train[split[0]] = True

    kinds = list(dict.fromkeys(hook_suffix(n) for n in names))
    layers = sorted({-1 if hook_layer(n) is None else hook_layer(n) for n in names})
    data = np.full((len(kinds), len(layers), len(pos_labels), len(METRICS)), np.nan)
    jobs = [(n, j) for n in names for j in range(len(pos_labels))]
    if progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="probes")
    uninformative: dict[str, str] = {}  # position label -> why (warned once, after the sweep)
    for name, j in jobs:
        pos = index[:, j]
        y = labels_all if labels_all.ndim == 1 else labels_all.gather(1, pos.clamp(min=0)[:, None])[:, 0]
        ok = (pos >= 0) & (y >= 0)
        tr, te = torch.nonzero(ok & in_train)[:, 0], torch.nonzero(ok & ~in_train)[:, 0]
        if len(tr) < 2 or len(te) < 1:
            continue
        types = batch.tokens.gather(1, pos.clamp(min=0)[:, None])[:, 0] if control else None
        res = fit_probe(acts[name][:, j], y, method=method, control=types, split=(tr, te), seed=seed, warn=False,
                        **fit_kw)
        if control and not res.control_informative:
            uninformative.setdefault(str(pos_labels[j]), _why_uninformative(types, tr))
        layer = -1 if hook_layer(name) is None else hook_layer(name)
        at = (kinds.index(hook_suffix(name)), layers.index(layer), j)
        data[at] = [res.metrics()[m] for m in METRICS]
    if not control:
        data[..., METRICS.index("control_informative")] = np.nan  # no control task: nothing to flag
    if uninformative:
        where = "; ".join(f"position {p}: {why}" for p, why in uninformative.items())
        warnings.warn(f"control task uninformative at {len(uninformative)} position(s) ({where}): those cells "
                      "are marked control_informative = 0 and have no selectivity", UninformativeControl,
                      stacklevel=2)
    return xr.DataArray(
        data, dims=("hook", "layer", "position", "metric"),
        coords={"hook": kinds, "layer": layers, "metric": list(METRICS),
                # ints when every position is absolute, else all labels as strings ("0", "query")
                "position": pos_labels if all(isinstance(p, int) for p in pos_labels) else [str(p) for p in pos_labels]},
        name="probe_accuracy",
        attrs={"target": target if isinstance(target, str) else getattr(target, "__name__", "custom"),
               "method": method, "control": bool(control), "test_frac": float(test_frac), "seed": int(seed),
               "n_examples": len(batch), "n_test": len(split[1]), "task": batch.task},
    )


def sweep_table(da: xr.DataArray):
    """The sweep as a tidy table: columns hook, layer, position, metric, value (NaN rows
    dropped), and ``control_informative`` (bool, per cell: False where the control task
    cannot mean anything, so its control_acc is not to be read)."""
    df = da.to_dataframe(name="value").reset_index()
    df["position"] = df["position"].astype(str)
    flag = "control_informative"
    if flag in df["metric"].values:
        cells = ["hook", "layer", "position"]
        flags = df[df["metric"] == flag].set_index(cells)["value"]
        df = df[df["metric"] != flag]
        df = df.assign(**{flag: [not (f == 0) for f in flags.reindex(pd.MultiIndex.from_frame(df[cells])).to_numpy()]})
    return df.dropna(subset=["value"]).reset_index(drop=True)


__all__ = [
    "gather_positions", "positions_index", "probe_sweep", "resolve_hooks", "sweep_table", "target_labels",
]
