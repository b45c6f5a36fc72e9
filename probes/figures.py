"""Plotly figures of intervention results, for notebooks and the dashboard.

Every function takes the labelled array a probe returns (or reads back from a run
store: ``open_run(url).result("patching/resid_pre")``) and returns a
``plotly.graph_objects.Figure``; none needs torch or the model.

- ``patching_heatmap``: a metric (default: restored fraction) over layer × position
  (or role), one panel per hook kind, positions labelled by their tokens/roles; the
  title says how many examples a restored fraction excluded (``exclusion_note``).
- ``attribution_heatmap``: the same for attribution patching (``delta`` or ``restored``).
- ``interchange_bars``: interchange accuracy per unit, bars per hook site, with the
  no-intervention baseline as a line.
- ``compare_scatter``: attribution estimates against real patching, one point per
  (hook, layer, unit), with the identity line.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

_UNIT_DIMS = ("pos", "role")
_FRACTIONS = ("restored", "restored_logit_diff", "iia", "accuracy", "p_answer", "p_label")


def _unit_dim(da: xr.DataArray) -> str:
    for d in _UNIT_DIMS:
        if d in da.dims:
            return d
    raise ValueError(f"result has no position axis (one of {_UNIT_DIMS}); dims are {da.dims}")


def _select(da: xr.DataArray, metric: str | None) -> xr.DataArray:
    if "metric" in da.dims:
        metrics = [str(m) for m in da["metric"].values]
        if metric is None:
            metric = metrics[0]
        if metric not in metrics:
            raise ValueError(f"no metric {metric!r} in this result; metrics: {', '.join(metrics)}")
        da = da.sel(metric=metric)
    if "batch" in da.dims:
        da = da.mean("batch")
    return da


def unit_labels(da: xr.DataArray) -> list[str]:
    """Tick labels of the unit axis: ``"12 key[5]"`` when position labels are known."""
    dim = _unit_dim(da)
    units = [str(u) for u in da[dim].values] if dim in da.coords else [str(i) for i in range(da.sizes[dim])]
    names = da.attrs.get("pos_labels")
    if dim == "pos" and names is not None and len(names) == len(units):
        return [f"{u} {n}" for u, n in zip(units, names)]
    return units


def exclusion_note(da: xr.DataArray, metric: str | None) -> str | None:
    """What a restored fraction leaves out, from the result's ``attrs`` (``<metric>_excluded``,
    ``<metric>_min_gap``: ``ssmlens.probes.metrics``): "3 of 16 examples excluded (…)",
    "undefined (…)" when no example keeps a ratio, None when nothing was excluded."""
    excluded = da.attrs.get(f"{metric}_excluded")
    if not excluded:
        return None
    n, gap = da.attrs.get("n_examples"), da.attrs.get(f"{metric}_min_gap")
    why = f"clean − corrupted gap below {float(gap):.3g}" if gap is not None else "clean ≈ corrupted"
    if n is not None and int(excluded) >= int(n):
        return f"{metric} undefined: the corruption barely moves its metric ({why})"
    return f"{metric}: {int(excluded)} of {n if n is not None else '?'} examples excluded ({why})"


def _layer_labels(da: xr.DataArray) -> list[str]:
    layers = da["layer"].values if "layer" in da.coords else range(da.sizes["layer"])
    return ["embed" if int(l) < 0 else f"L{int(l)}" for l in layers]


def _hooks(da: xr.DataArray, hook: str | None) -> list[str | None]:
    if "hook" not in da.dims:
        return [None]
    hooks = [str(h) for h in da["hook"].values]
    if hook is None:
        return hooks
    match = [h for h in hooks if h == hook or h.endswith(hook) or h.endswith(f"hook_{hook}")]
    if not match:
        raise ValueError(f"no hook {hook!r} in this result; hooks: {', '.join(hooks)}")
    return match


def _heatmap(da: xr.DataArray, metric: str | None, hook: str | None, title: str | None,
             zrange: tuple[float, float] | None, labels: list[str] | None) -> go.Figure:
    metric = metric if metric is not None or "metric" not in da.dims else str(da["metric"].values[0])
    sel = _select(da, metric)
    hooks = _hooks(sel, hook)
    x = labels if labels is not None else unit_labels(sel)
    fig = make_subplots(rows=len(hooks), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[h or "" for h in hooks])
    if zrange is None and metric in _FRACTIONS:
        zrange = (-1.0, 1.0)
    values = [sel.sel(hook=h).values if h is not None else sel.values for h in hooks]
    if zrange is None:
        finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values] + [np.zeros(1)])
        bound = float(np.abs(finite).max()) or 1.0
        zrange = (-bound, bound)
    ylabels = _layer_labels(sel)
    label = metric or str(da.attrs.get("metric") or "value")  # a result without a metric axis names it in attrs
    for row, (h, z) in enumerate(zip(hooks, values), start=1):
        fig.add_trace(go.Heatmap(
            z=z, x=x, y=ylabels, zmin=zrange[0], zmax=zrange[1], colorscale="RdBu", reversescale=True,
            colorbar=dict(title=metric or ""), showscale=row == 1,
            hovertemplate=f"{h or ''} %{{y}} @ %{{x}}<br>{label}=%{{z:.4f}}<extra></extra>"), row=row, col=1)
        fig.update_yaxes(title_text="layer", row=row, col=1)
    unit = _unit_dim(sel)
    fig.update_xaxes(title_text="position" if unit == "pos" else "unit", row=len(hooks), col=1)
    direction = da.attrs.get("direction")
    kind = da.attrs.get("kind", "patching").replace("_", " ")
    default = f"{kind}: {label}" + (f" ({direction})" if direction else "")
    note = exclusion_note(da, metric)
    title = title or default
    if note:  # in the title, so that whoever restyles the figure keeps it
        title = f"{title}<br><sup>{note}</sup>"
    fig.update_layout(title=title, height=220 + 180 * len(hooks), template="plotly_white")
    return fig


def patching_heatmap(result: xr.DataArray, metric: str = "restored", hook: str | None = None, *,
                     title: str | None = None, zrange: tuple[float, float] | None = None,
                     labels: list[str] | None = None) -> go.Figure:
    """Heatmap of ``metric`` over layer × position/role, one panel per hook kind.

    result: ``patching_sweep``'s array (dims ``metric, hook, layer, pos|role``; the
    ``hook`` or ``metric`` axis may be absent). hook: one kind only. labels: x tick
    labels (default: positions with their role/token labels from ``attrs``).
    Restored fractions use a fixed −1…1 diverging scale, so panels compare.
    """
    return _heatmap(result, metric, hook, title, zrange, labels)


def attribution_heatmap(result: xr.DataArray, metric: str = "restored", hook: str | None = None, *,
                        title: str | None = None, zrange: tuple[float, float] | None = None,
                        labels: list[str] | None = None) -> go.Figure:
    """Heatmap of an ``attribution_patching`` result (``delta`` or ``restored``)."""
    return _heatmap(result, metric, hook, title, zrange, labels)


def interchange_bars(result: xr.DataArray, metric: str = "iia", *, title: str | None = None) -> go.Figure:
    """Bars of an ``interchange_sweep`` metric per unit, one bar per hook site
    (``hook`` × ``layer``); the no-intervention ``base_iia`` as a dashed line."""
    sel = _select(result, metric)
    unit = _unit_dim(sel)
    x = unit_labels(sel)
    fig = go.Figure()
    for h in _hooks(sel, None):
        part = sel.sel(hook=h) if h is not None else sel
        for li, lab in enumerate(_layer_labels(part)):
            y = part.isel(layer=li).values
            if np.all(np.isnan(y)):
                continue
            fig.add_bar(x=x, y=y, name=f"{lab} {h or ''}".strip(),
                        hovertemplate=f"{lab} {h or ''}<br>%{{x}}: {metric}=%{{y:.3f}}<extra></extra>")
    if metric == "iia" and "base_iia" in result.attrs:
        fig.add_hline(y=float(result.attrs["base_iia"]), line_dash="dash", annotation_text="no intervention")
    fig.update_layout(barmode="group", title=title or f"interchange intervention: {metric}",
                      xaxis_title="position" if unit == "pos" else "unit", yaxis_title=metric,
                      template="plotly_white")
    if metric in _FRACTIONS:
        fig.update_yaxes(range=[0, 1.05])
    return fig


def compare_scatter(patching: xr.DataArray, attribution: xr.DataArray, patch_metric: str = "restored_logit_diff",
                    attr_metric: str = "restored", *, title: str | None = None) -> go.Figure:
    """Attribution estimate (y) against real patching (x), one point per site × unit."""
    p = _select(patching, patch_metric)
    a = _select(attribution, attr_metric)
    p, a = xr.align(p, a, join="inner")
    pts = p.to_dataframe(name="patching").join(a.to_dataframe(name="attribution"), rsuffix="_a").reset_index()
    pts = pts.dropna(subset=["patching", "attribution"])
    unit = _unit_dim(p)
    text = [f"{r.get('hook', '')} L{r['layer']} {r[unit]}" for _, r in pts.iterrows()]
    fig = go.Figure(go.Scatter(x=pts["patching"], y=pts["attribution"], mode="markers", text=text,
                               hovertemplate="%{text}<br>patching=%{x:.4f}<br>attribution=%{y:.4f}<extra></extra>"))
    lo = float(min(pts["patching"].min(), pts["attribution"].min(), 0)) if len(pts) else 0.0
    hi = float(max(pts["patching"].max(), pts["attribution"].max(), 0)) if len(pts) else 1.0
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dash", color="gray"),
                             showlegend=False, hoverinfo="skip"))
    fig.update_layout(title=title or "attribution patching vs activation patching",
                      xaxis_title=f"patching: {patch_metric}", yaxis_title=f"attribution: {attr_metric}",
                      template="plotly_white", showlegend=False)
    return fig
