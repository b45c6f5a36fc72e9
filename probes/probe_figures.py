"""Plotly figures of probe sweeps (``ssmlens.probes.linear.probe_sweep`` / a run's ``probe/accuracy``).

- ``probe_accuracy_figure(da, x="layer")``: held-out accuracy as curves over layers
  (one curve per hook kind × position) or over positions (one per hook kind ×
  layer), each with its control task dashed in the same colour, and chance dotted.
- ``probe_heatmap(da, hook)``: one metric over layer × position.

Both take the ``(hook, layer, position, metric)`` DataArray and return a
``plotly.graph_objects.Figure`` (notebooks: ``fig.show()``; the dashboard embeds it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.colors import qualitative

DIMS = ("hook", "layer", "position", "metric")


def _check(da: xr.DataArray) -> xr.DataArray:
    if not isinstance(da, xr.DataArray) or set(da.dims) != set(DIMS):
        got = getattr(da, "dims", type(da).__name__)
        raise ValueError(f"expected a probe sweep DataArray with dims {DIMS}, got {got}")
    return da.transpose(*DIMS)


def _select(values, wanted, what: str) -> list:
    values = list(values)
    if wanted is None:
        return values
    wanted = [wanted] if isinstance(wanted, (str, int)) else list(wanted)
    as_str = {str(v): v for v in values}
    missing = [w for w in wanted if str(w) not in as_str]
    if missing:
        raise ValueError(f"no {what} {missing} in this sweep; {what}s: {values}")
    return [as_str[str(w)] for w in wanted]


def probe_accuracy_figure(
    da: xr.DataArray, x: str = "layer", *, hooks: Sequence[str] | str | None = None,
    positions: Sequence | None = None, layers: Sequence[int] | None = None, control: bool = True,
    metric: str = "test_acc", title: str | None = None,
) -> go.Figure:
    """Probe accuracy curves over ``x`` ("layer" or "position"), control dashed, chance dotted.

    ``hooks`` / ``positions`` / ``layers`` restrict what is drawn (by default every
    hook kind, every position when x="layer" and every layer when x="position").
    """
    da = _check(da)
    if x not in ("layer", "position"):
        raise ValueError(f"x must be 'layer' or 'position', got {x!r}")
    other = "position" if x == "layer" else "layer"
    hook_sel = _select(da.hook.values, hooks, "hook")
    other_sel = _select(da[other].values, positions if other == "position" else layers, other)
    xs = [str(v) for v in da[x].values]
    fig = go.Figure()
    colors = qualitative.Plotly
    k = 0
    for hook in hook_sel:
        for o in other_sel:
            sub = da.sel(hook=hook, **{other: o})
            ys = sub.sel(metric=metric).values
            if np.all(np.isnan(ys)):
                continue
            color = colors[k % len(colors)]
            k += 1
            name = f"{hook} · {other} {o}"
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, legendgroup=name,
                                     line={"color": color}))
            if control and "control_acc" in da.metric.values:
                cs = sub.sel(metric="control_acc").values
                if not np.all(np.isnan(cs)):
                    fig.add_trace(go.Scatter(x=xs, y=cs, mode="lines", name=f"{name} (control)",
                                             legendgroup=name, line={"color": color, "dash": "dash"}))
    if "chance" in da.metric.values:
        chance = float(np.nanmean(da.sel(metric="chance").values)) if np.any(
            ~np.isnan(da.sel(metric="chance").values)) else None
        if chance is not None:
            fig.add_hline(y=chance, line={"dash": "dot", "color": "gray"}, annotation_text="chance")
    target = da.attrs.get("target", "")
    fig.update_layout(
        title=title or f"Probe accuracy for {target!s} by {x}", xaxis_title=x,
        yaxis_title=metric.replace("_", " "), yaxis={"range": [0, 1.05]}, template="plotly_white",
        legend={"title": "probe"},
    )
    if x == "layer":
        fig.update_xaxes(type="category")
    return fig


def probe_heatmap(da: xr.DataArray, hook: str | None = None, metric: str = "test_acc",
                  title: str | None = None) -> go.Figure:
    """``metric`` of one hook kind over layer (rows) × position (columns)."""
    da = _check(da)
    hook = _select(da.hook.values, hook, "hook")[0] if hook is not None else str(da.hook.values[0])
    z = da.sel(hook=hook, metric=metric).values
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(p) for p in da.position.values], y=[str(l) for l in da.layer.values],
        zmin=0, zmax=1 if metric != "selectivity" else None, colorscale="Viridis",
        colorbar={"title": metric.replace("_", " ")},
        hovertemplate="layer %{y}<br>position %{x}<br>%{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title=title or f"{hook}: {metric.replace('_', ' ')} ({da.attrs.get('target', '')})",
                      xaxis_title="position", yaxis_title="layer", template="plotly_white")
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


__all__ = ["probe_accuracy_figure", "probe_heatmap"]
