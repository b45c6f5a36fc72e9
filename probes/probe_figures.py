"""Plotly figures of probe sweeps (``ssmlens.probes.linear_sweep.probe_sweep`` / a run's ``probe/accuracy``).

- ``probe_accuracy_figure(da, x="layer")``: held-out accuracy as curves over layers
  (one curve per hook kind × position) or over positions (one per hook kind ×
  layer), each with its control task dashed in the same colour, and chance dotted.
- ``probe_heatmap(da, hook)``: one metric over layer × position.

Both take the ``(hook, layer, position, metric)`` DataArray and return a
``plotly.graph_objects.Figure`` (notebooks: ``fig.show()``; the dashboard embeds it).
Cells whose control task is uninformative (metric ``control_informative`` 0: the
probed token never varies) get no control or selectivity number: the curves skip
them and say where in the title, the heatmaps draw them grey, labelled "uninformative".
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


CONTROL_METRICS = ("control_acc", "selectivity")  # what an uninformative control leaves meaningless


def uninformative(da: xr.DataArray) -> xr.DataArray:
    """bool over (hook, layer, position): True where the control task is uninformative."""
    if "control_informative" not in da.metric.values:
        return xr.zeros_like(da.isel(metric=0, drop=True), dtype=bool)
    return da.sel(metric="control_informative", drop=True) == 0


def _masked(da: xr.DataArray, metric: str) -> xr.DataArray:
    """``metric`` of every cell, NaN where an uninformative control makes it meaningless."""
    values = da.sel(metric=metric, drop=True)
    return values.where(~uninformative(da)) if metric in CONTROL_METRICS else values


def _uninformative_note(da: xr.DataArray) -> str | None:
    flags = uninformative(da)
    if not bool(flags.any()):
        return None
    where = [str(p) for p in da.position.values if bool(flags.sel(position=p).any())]
    return (f"control task uninformative at position {', '.join(where)} "
            "(one control label there: a token that never varies): not drawn")


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
            ys = _masked(sub, metric).values
            if np.all(np.isnan(ys)):
                continue
            color = colors[k % len(colors)]
            k += 1
            name = f"{hook} · {other} {o}"
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, legendgroup=name,
                                     line={"color": color}))
            if control and "control_acc" in da.metric.values:
                cs = _masked(sub, "control_acc").values
                if not np.all(np.isnan(cs)):
                    fig.add_trace(go.Scatter(x=xs, y=cs, mode="lines", name=f"{name} (control)",
                                             legendgroup=name, line={"color": color, "dash": "dash"}))
    if "chance" in da.metric.values:
        chance = float(np.nanmean(da.sel(metric="chance").values)) if np.any(
            ~np.isnan(da.sel(metric="chance").values)) else None
        if chance is not None:
            fig.add_hline(y=chance, line={"dash": "dot", "color": "gray"}, annotation_text="chance")
    target = da.attrs.get("target", "")
    title = title or f"Probe accuracy for {target!s} by {x}"
    note = _uninformative_note(da) if control or metric in CONTROL_METRICS else None
    fig.update_layout(
        title=f"{title}<br><sup>{note}</sup>" if note else title, xaxis_title=x,
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
    sub = da.sel(hook=hook)
    z = _masked(sub, metric).values
    xs, ys = [str(p) for p in da.position.values], [str(l) for l in da.layer.values]
    fig = go.Figure(go.Heatmap(
        z=z, x=xs, y=ys,
        zmin=0, zmax=1 if metric != "selectivity" else None, colorscale="Viridis",
        colorbar={"title": metric.replace("_", " ")},
        hovertemplate="layer %{y}<br>position %{x}<br>%{z:.3f}<extra></extra>",
    ))
    title = title or f"{hook}: {metric.replace('_', ' ')} ({da.attrs.get('target', '')})"
    flags = uninformative(sub).values
    if metric in CONTROL_METRICS and flags.any():  # grey cells that say why, instead of a number
        fig.add_trace(go.Heatmap(
            z=np.where(flags, 1.0, np.nan), x=xs, y=ys, name="uninformative", showscale=False,
            colorscale=[[0, "#d9d9d9"], [1, "#d9d9d9"]], text=np.where(flags, "uninformative", ""),
            texttemplate="%{text}", hovertemplate="layer %{y}<br>position %{x}<br>control task uninformative: "
                                                  "one control label here<extra></extra>"))
        title = f"{title}<br><sup>{_uninformative_note(sub.expand_dims(hook=[hook]))}</sup>"
    fig.update_layout(title=title, xaxis_title="position", yaxis_title="layer", template="plotly_white")
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


__all__ = ["probe_accuracy_figure", "probe_heatmap", "uninformative"]
