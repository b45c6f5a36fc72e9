"""Any stored result (a labelled ``xarray.DataArray``) as a figure, whatever its dims.

The probes write results whose names and dims this module does not need to know in
advance (``patching/resid_pre (layer, pos)``, ``probe/accuracy (hook, layer, position,
metric)``, ``ablation/acc (model, task, ablation)``, ...). Two dims are drawn (layer ×
position when present, else the last two), a 1-D result is a line, and every other
dim is fixed by a *slice* choice ("mean over them", or one label each). Known kinds
get the figure their probe module draws (``ssmlens.probes.probe_figures``).
"""

from __future__ import annotations

import itertools
import json
import warnings
import numpy as np
import xarray as xr

from ssmlens.dashboards import figures

POSITION_DIMS = ("pos", "position", "query_pos", "seq", "token")
LAYER_DIMS = ("layer", "layers", "block")
MEAN = "mean"
MAX_SLICES = 300
PREFERRED_METRICS = ("restored", "restored_logit_diff", "iia", "test_acc", "acc", "accuracy", "delta")


def _numeric_positions(da: xr.DataArray, dim: str) -> np.ndarray | None:
    """Integer token positions of ``dim``'s labels (its indices when unlabelled), or None."""
    if dim not in da.coords:
        return np.arange(da.sizes[dim])
    try:
        return np.asarray([int(str(v)) for v in da[dim].values])
    except ValueError:  # role labels such as "query": not positions of one sequence
        return None


def position_dim(da: xr.DataArray, seq_len: int | None = None) -> str | None:
    """The dim of ``da`` that runs over token positions (numeric, inside the sequence)."""
    for dim in da.dims:
        if dim in POSITION_DIMS:
            pos = _numeric_positions(da, dim)
            if pos is not None and (seq_len is None or (pos.size and pos.min() >= 0 and pos.max() < seq_len)):
                return dim
    return None


def layer_dim(da: xr.DataArray) -> str | None:
    return next((d for d in da.dims if d in LAYER_DIMS), None)


def _nanmean(da: xr.DataArray, dims) -> xr.DataArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return da.mean(dim=list(dims), skipna=True) if dims else da


def layer_pos_profile(da: xr.DataArray, seq_len: int) -> dict[str, np.ndarray]:
    """"layer l" -> values over the sequence ``[seq_len]`` (NaN where the result has no
    position), other dims averaged: a result as per-token strips."""
    pdim, ldim = position_dim(da, seq_len), layer_dim(da)
    if pdim is None or ldim is None:
        return {}
    if display_dims(da) == (ldim, pdim):
        da, _ = select(da, None)  # the preferred metric, other dims averaged
    da = _nanmean(da.astype(float), [d for d in da.dims if d not in (pdim, ldim)]).transpose(ldim, pdim)
    pos = _numeric_positions(da, pdim)
    out = {}
    layers = da[ldim].values if ldim in da.coords else range(da.sizes[ldim])
    for i, layer in enumerate(layers):
        row = np.full(seq_len, np.nan)
        row[pos] = da.values[i]
        out[f"layer {layer}"] = row
    return out


def display_dims(da: xr.DataArray) -> tuple[str, ...]:
    """The dims a figure draws: (rows, columns) for 2-D and more, (x,) for 1-D."""
    if da.ndim <= 1:
        return tuple(da.dims)
    ldim, pdim = layer_dim(da), position_dim(da)
    if ldim and pdim:
        return ldim, pdim
    rest = [d for d in da.dims if d not in (ldim, "metric", "batch")] or [d for d in da.dims if d != ldim]
    if ldim:
        return ldim, rest[-1]
    return tuple(rest[-2:]) if len(rest) >= 2 else tuple(da.dims[-2:])


def _labels(da: xr.DataArray, dim: str) -> list:
    return [v.item() if hasattr(v, "item") else v for v in da[dim].values] if dim in da.coords \
        else list(range(da.sizes[dim]))


def _preferred(da: xr.DataArray, dim: str) -> list[int]:
    """Indices along ``dim`` in the order a slice menu offers them: for "metric", the
    fractions the probes report first (restored, IIA, test accuracy), then the rest."""
    n = da.sizes[dim]
    if dim != "metric":
        return list(range(n))
    labels = [str(v) for v in _labels(da, dim)]
    rank = {m: i for i, m in enumerate(PREFERRED_METRICS)}
    return sorted(range(n), key=lambda i: (rank.get(labels[i], len(rank)), i))


def slice_options(da: xr.DataArray) -> list[dict[str, str]]:
    """Choices for the dims that are not drawn: their mean (unless one is "metric":
    averaging different metrics means nothing), then one label of each."""
    extra = [d for d in da.dims if d not in display_dims(da)]
    if not extra:
        return []
    options = [] if "metric" in extra else [{"label": f"mean over {', '.join(extra)}", "value": MEAN}]
    combos = itertools.product(*[_preferred(da, d) for d in extra])
    for combo in itertools.islice(combos, MAX_SLICES):
        label = ", ".join(f"{d}={_labels(da, d)[i]}" for d, i in zip(extra, combo))
        options.append({"label": label, "value": json.dumps(dict(zip(extra, combo)))})
    return options


def chosen_index(da: xr.DataArray, choice: str | None) -> dict[str, int]:
    """The label index per extra dim that ``choice`` picks; {} for "mean" or a choice that
    does not fit ``da`` (a slice chosen for another result)."""
    extra = [d for d in da.dims if d not in display_dims(da)]
    if not choice or choice == MEAN:
        return {}
    try:
        index = {d: int(i) for d, i in json.loads(choice).items()}
    except (ValueError, TypeError, AttributeError):
        return {}
    if set(index) != set(extra) or not all(0 <= i < da.sizes[d] for d, i in index.items()):
        return {}
    return index


def select(da: xr.DataArray, choice: str | None) -> tuple[xr.DataArray, str]:
    """``da`` reduced to its display dims by the slice ``choice``, and a label of it.
    Without a fitting choice: the preferred metric (if any), mean over the other dims."""
    extra = [d for d in da.dims if d not in display_dims(da)]
    if not extra:
        return da, ""
    index = chosen_index(da, choice)
    if index:
        return da.isel(index), ", ".join(f"{d}={_labels(da, d)[i]}" for d, i in index.items())
    parts = []
    if "metric" in extra:
        i = _preferred(da, "metric")[0]
        parts.append(f"metric={_labels(da, 'metric')[i]}")
        da = da.isel(metric=i)
        extra = [d for d in extra if d != "metric"]
    if extra:
        da = _nanmean(da.astype(float), extra)
        parts.append(f"mean over {', '.join(extra)}")
    return da, "; ".join(parts)


def is_probe_sweep(da: xr.DataArray) -> bool:
    return set(da.dims) == {"hook", "layer", "position", "metric"}


PATCHING_DIMS = {"metric", "hook", "layer", "pos", "role", "batch"}


def probe_figure(da: xr.DataArray, name: str, choice: str | None, roles: list[str] | None = None):
    """The figure the probes' own modules draw for this result (``ssmlens.probes.figures``,
    ``ssmlens.probes.probe_figures``), with the metric / hook of the slice; None when none fits
    (or the result is too large for them: they do not downsample)."""
    family = name.split("/")[0]
    index = chosen_index(da, choice)
    if is_probe_sweep(da):
        if index:
            return None  # one slice of the sweep: the generic heatmap of it
        from ssmlens.probes.probe_figures import probe_accuracy_figure

        return probe_accuracy_figure(da)
    fits = "layer" in da.dims and ({"pos", "role"} & set(da.dims)) and set(da.dims) <= PATCHING_DIMS
    if not fits or da.size > figures.MAX_CELLS:
        return None
    metric = None
    if "metric" in da.dims:
        metric = str(_labels(da, "metric")[index.get("metric", _preferred(da, "metric")[0])])
    hook = str(_labels(da, "hook")[index["hook"]]) if "hook" in index else None
    labels = None  # positions labelled by role when the probe did not record labels itself
    if roles and "pos" in da.dims and da.attrs.get("pos_labels") is None:
        labels = axis_labels(da, "pos", roles)
    from ssmlens.probes import figures as probe_figures

    if family in ("patching", "patching_roles"):
        return probe_figures.patching_heatmap(da, metric=metric, hook=hook, labels=labels)
    if family == "attribution":
        return probe_figures.attribution_heatmap(da, metric=metric, hook=hook, labels=labels)
    if family == "interchange":
        return probe_figures.interchange_bars(da, metric=metric or "iia")
    return None


def axis_labels(sub: xr.DataArray, dim: str, roles: list[str] | None) -> list[str]:
    """Labels along ``dim``; positions get their role ("12 k") when ``roles`` are given."""
    labels = _labels(sub, dim)
    if roles and dim in POSITION_DIMS:
        from ssmlens.dashboards.catalog import position_labels

        return position_labels(labels, roles)
    return [str(v) for v in labels]


def result_figure(da: xr.DataArray, name: str, choice: str | None = None, *, title: str | None = None,
                  zmin: float | None = None, zmax: float | None = None, height: int = 380,
                  roles: list[str] | None = None):
    """The figure of one result (probe sweeps: accuracy curves; otherwise generic).
    ``roles``: per-position roles, to label a position axis (see ``catalog.stable_roles``)."""
    title = title or name
    try:
        fig = probe_figure(da, name, choice, roles)
    except (ValueError, KeyError):  # a shape the probe's figure does not take: draw it generically
        fig = None
    if fig is not None:
        return figures.style(fig, fig.layout.title.text or title, height=max(fig.layout.height or 0, height))
    if da.size == 0:
        return figures.message(f"{name} is empty", title)
    sub, label = select(da, choice)
    if sub.ndim == 0:
        return figures.message(f"{name}: {float(sub.values):.6g}", title)
    note = label or None
    if sub.ndim == 1:
        dim = sub.dims[0]
        x = axis_labels(sub, dim, roles)
        fig = figures.lines({name.split("/")[-1]: sub.values.astype(float)}, x, title=title, xlabel=dim,
                            ylabel=str(da.attrs.get("metric", "value")), mode="lines+markers", height=height)
        fig.update_xaxes(type="category")
        return figures.style(fig, title, height=height, note=note)
    ydim, xdim = display_dims(da)
    z = sub.transpose(ydim, xdim).values.astype(float)
    finite = z[np.isfinite(z)]
    signed = finite.size and finite.min() < 0 < finite.max()
    return figures.heatmap(
        z, axis_labels(sub, xdim, roles), axis_labels(sub, ydim, roles), title=title,
        xlabel=xdim, ylabel=ydim, colorscale="RdBu_r" if signed else "Viridis", zmid=0 if signed else None,
        zmin=zmin, zmax=zmax, colorbar=str(da.attrs.get("metric", "")), note=note, height=height,
        categorical=True,
    )


def describe(da: xr.DataArray) -> str:
    """"dims (layer=2, pos=256)" plus the attrs a probe recorded, for the page's caption."""
    dims = ", ".join(f"{d}={n}" for d, n in da.sizes.items())
    attrs = ", ".join(f"{k}={v}" for k, v in list(da.attrs.items())[:6] if isinstance(v, (str, int, float)))
    return f"dims ({dims})" + (f"; {attrs}" if attrs else "")


def peak_by_layer(da: xr.DataArray, choice: str | None = None) -> dict[str, float]:
    """Largest |value| per layer (over every other drawn dim): a one-number-per-layer
    summary for comparing runs ("which layer carries it")."""
    sub, _ = select(da, choice)
    ldim = layer_dim(sub)
    if ldim is None:
        return {}
    other = [d for d in sub.dims if d != ldim]
    values = np.abs(sub.astype(float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        peak = values.max(dim=other, skipna=True) if other else values
    return {str(l): float(v) for l, v in zip(_labels(sub, ldim), np.atleast_1d(peak.values))}
