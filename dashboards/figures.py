"""Generic figure builders: pure functions of numpy arrays -> plotly figures.

Heatmaps larger than ``MAX_CELLS`` cells are downsampled on the server by block means
before they are sent (the browser never receives a multi-million-cell array), and the
figure says so in a note under its title. Every builder sets a title, axis labels and
a ``uirevision`` so that zoom survives a re-render with new data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

MAX_CELLS = 250_000  # past this, heatmaps are block-averaged (a few hundred thousand cells)
COLORS = qualitative.Plotly
_GRID = {"gridcolor": "#EBF0F8", "linecolor": "#EBF0F8", "zerolinecolor": "#EBF0F8", "ticks": "", "automargin": True}
# A small white template rather than "plotly_white": that one is copied and validated
# into every figure (~10 ms each) and adds ~10 kB to every figure sent to the browser.
TEMPLATE = go.layout.Template(layout={
    "paper_bgcolor": "white", "plot_bgcolor": "white", "font": {"color": "#2a3f5f"}, "colorway": COLORS,
    "hoverlabel": {"align": "left"}, "xaxis": _GRID, "yaxis": _GRID,
})


def style(fig: go.Figure, title: str, *, height: int = 360, note: str | None = None,
          uirevision: Any = True) -> go.Figure:
    """Shared layout: title (with an optional note line under it), margins, template."""
    text = title if not note else f"{title}<br><sup>{note}</sup>"
    fig.update_layout(
        title={"text": text, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        template=TEMPLATE, height=height, margin={"l": 60, "r": 20, "t": 70 if note else 50, "b": 45},
        uirevision=uirevision, meta="ssm",  # meta: "drawn by the server" (benchmarks wait for it)
    )
    return fig


def message(text: str, title: str = "", height: int = 260) -> go.Figure:
    """An empty figure that shows ``text`` (no data, an error, a missing hook)."""
    fig = go.Figure()
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 13, "color": "#555"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return style(fig, title, height=height)


# ---- downsampling ------------------------------------------------------------------------------


def block_factors(shape: tuple[int, int], max_cells: int = MAX_CELLS) -> tuple[int, int]:
    """Smallest (fy, fx) block shape whose block means fit in ``max_cells`` cells; the
    longer axis is shrunk first so a long thin heatmap keeps its short axis."""
    h, w = shape
    fy = fx = 1
    while math.ceil(h / fy) * math.ceil(w / fx) > max_cells:
        if math.ceil(h / fy) >= math.ceil(w / fx):
            fy += 1
        else:
            fx += 1
    return fy, fx


def downsample(z: np.ndarray, max_cells: int = MAX_CELLS) -> tuple[np.ndarray, tuple[int, int]]:
    """Block means of a 2-D array so it has at most ``max_cells`` cells; NaNs ignored."""
    z = np.asarray(z, dtype=np.float64)
    fy, fx = block_factors(z.shape, max_cells)
    if (fy, fx) == (1, 1):
        return z, (1, 1)
    h, w = z.shape
    H, W = math.ceil(h / fy), math.ceil(w / fx)
    padded = np.full((H * fy, W * fx), np.nan)
    padded[:h, :w] = z
    with warnings.catch_warnings():  # an all-NaN block is NaN, as it should be
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(padded.reshape(H, fy, W, fx), axis=(1, 3)), (fy, fx)


def _thin(labels: Sequence | None, n: int, f: int) -> list | None:
    if labels is None:
        return None
    labels = list(labels)
    return labels[::f] if f > 1 else labels


def heatmap(z: np.ndarray, x: Sequence | None = None, y: Sequence | None = None, *, title: str,
            xlabel: str = "", ylabel: str = "", colorscale: str = "Viridis", zmid: float | None = None,
            zmin: float | None = None, zmax: float | None = None, colorbar: str = "",
            max_cells: int = MAX_CELLS, height: int = 380, note: str | None = None,
            categorical: bool = False) -> go.Figure:
    """A heatmap of ``z [len(y), len(x)]``, downsampled past ``max_cells`` (said in the note)."""
    z = np.asarray(z)
    small, (fy, fx) = downsample(z, max_cells)
    small = small.astype(np.float32)  # display precision; halves what the browser receives
    notes = [note] if note else []
    if (fy, fx) != (1, 1):
        notes.append(f"downsampled for display: {z.shape[0]}×{z.shape[1]} → {small.shape[0]}×"
                     f"{small.shape[1]} (means of {fy}×{fx} blocks)")
    fig = go.Figure(go.Heatmap(
        z=small, x=_thin(x, z.shape[1], fx), y=_thin(y, z.shape[0], fy), colorscale=colorscale,
        zmid=zmid, zmin=zmin, zmax=zmax, colorbar={"title": {"text": colorbar}},
        hovertemplate=f"{ylabel or 'y'} %{{y}}<br>{xlabel or 'x'} %{{x}}<br>%{{z:.4g}}<extra></extra>",
    ))
    fig.update_xaxes(title_text=xlabel)
    fig.update_yaxes(title_text=ylabel)
    if categorical:
        fig.update_xaxes(type="category")
        fig.update_yaxes(type="category")
    return style(fig, title, height=height, note="; ".join(notes) or None)


def heatmap_panels(panels: Sequence[tuple[str, np.ndarray, Sequence | None, Sequence | None]], *,
                   title: str, xlabel: str = "", ylabel: str = "", colorscale: str = "RdBu_r",
                   symmetric: bool = True, height: int = 400, widths: Sequence[float] | None = None,
                   max_cells: int = MAX_CELLS // 2, note: str | None = None) -> go.Figure:
    """Heatmaps side by side on one colour scale: ``panels`` = (subtitle, z, x, y)."""
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels],
                        column_widths=list(widths) if widths else None, horizontal_spacing=0.06)
    values = [np.asarray(p[1], dtype=float) for p in panels]
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values] or [np.zeros(1)])
    finite = finite if finite.size else np.zeros(1)
    lo, hi = float(finite.min()), float(finite.max())
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1.0
        lo, hi = -m, m
    notes = [note] if note else []
    for i, ((sub, _, x, y), z) in enumerate(zip(panels, values), start=1):
        small, (fy, fx) = downsample(z, max_cells)
        small = small.astype(np.float32)
        if (fy, fx) != (1, 1):
            notes.append(f"{sub} downsampled {z.shape[0]}×{z.shape[1]} → {small.shape[0]}×{small.shape[1]}")
        fig.add_trace(go.Heatmap(
            z=small, x=_thin(x, z.shape[1], fx), y=_thin(y, z.shape[0], fy), zmin=lo, zmax=hi,
            colorscale=colorscale, showscale=i == len(panels), coloraxis=None,
            hovertemplate=f"{sub}<br>{ylabel or 'y'} %{{y}}<br>{xlabel or 'x'} %{{x}}<br>%{{z:.4g}}<extra></extra>",
        ), row=1, col=i)
        fig.update_xaxes(title_text=xlabel, row=1, col=i)
    fig.update_yaxes(title_text=ylabel, row=1, col=1)
    return style(fig, title, height=height, note="; ".join(notes) or None)


# ---- lines, bars, histograms ---------------------------------------------------------------------


def lines(series: Mapping[str, np.ndarray], x: Sequence | None = None, *, title: str, xlabel: str = "",
          ylabel: str = "", height: int = 340, mode: str = "lines", log_y: bool = False,
          dash: Mapping[str, str] | None = None) -> go.Figure:
    """One line per entry of ``series`` (name -> y values) over ``x`` (default: indices)."""
    fig = go.Figure()
    for i, (name, y) in enumerate(series.items()):
        y = np.asarray(y, dtype=float)
        xs = np.arange(len(y)) if x is None else x
        fig.add_trace(go.Scatter(x=xs, y=y, mode=mode, name=str(name),
                                 line={"color": COLORS[i % len(COLORS)], "dash": (dash or {}).get(name)}))
    fig.update_xaxes(title_text=xlabel)
    fig.update_yaxes(title_text=ylabel, type="log" if log_y else None)
    return style(fig, title, height=height)


def bars(groups: Mapping[str, Mapping[str, float]], *, title: str, xlabel: str = "", ylabel: str = "",
         height: int = 340) -> go.Figure:
    """Grouped bars: ``groups`` = series name -> {category: value}."""
    fig = go.Figure()
    for i, (name, values) in enumerate(groups.items()):
        fig.add_trace(go.Bar(x=[str(k) for k in values], y=[float(v) for v in values.values()],
                             name=str(name), marker_color=COLORS[i % len(COLORS)]))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text=xlabel, type="category")
    fig.update_yaxes(title_text=ylabel)
    return style(fig, title, height=height)


def histogram(values: np.ndarray, *, title: str, xlabel: str, log_x: bool = False, nbins: int = 60,
              height: int = 320, note: str | None = None) -> go.Figure:
    """A histogram; with ``log_x`` the bins are equal in log10 and ticks show the values."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & ((v > 0) if log_x else True)]
    if v.size == 0:
        return message("no finite values to histogram", title)
    fig = go.Figure(go.Histogram(x=np.log10(v) if log_x else v, nbinsx=nbins, marker_color=COLORS[0]))
    if log_x:
        lo, hi = math.floor(np.log10(v).min()), math.ceil(np.log10(v).max())
        ticks = list(range(lo, hi + 1))
        fig.update_xaxes(tickvals=ticks, ticktext=[f"{10.0 ** t:g}" for t in ticks])
    fig.update_xaxes(title_text=xlabel)
    fig.update_yaxes(title_text="count")
    return style(fig, title, height=height, note=note)


def mark_position(fig: go.Figure, pos: int | None, *, axis: str = "x",
                  color: str = "#d62728") -> go.Figure:
    """A dashed line at the selected token on every subplot's ``axis`` (x or y)."""
    if pos is None:
        return fig
    kw = {"line": {"color": color, "width": 1.5, "dash": "dot"}, "opacity": 0.9}
    if axis == "x":
        fig.add_vline(x=pos, **kw, row="all", col="all") if _has_grid(fig) else fig.add_vline(x=pos, **kw)
    else:
        fig.add_hline(y=pos, **kw, row="all", col="all") if _has_grid(fig) else fig.add_hline(y=pos, **kw)
    return fig


def _has_grid(fig: go.Figure) -> bool:
    return getattr(fig, "_grid_ref", None) is not None


def warm_up() -> None:
    """Build one figure of each kind, and run the heavier analyses once on tiny inputs:
    plotly loads its property validators on first use (~0.3 s), which would otherwise
    land on the first user's first callback."""
    z = np.zeros((2, 2))
    heatmap(z, title="")
    heatmap_panels([("a", z, None, None)], title="")
    mark_position(lines({"a": z[0]}, title="", dash={"a": "dot"}), 0)
    bars({"a": {"x": 1.0}}, title="")
    histogram(np.ones(3), title="", xlabel="", log_x=True)
    fig = go.Figure(go.Scatter(x=[0], y=[0], mode="markers+text", text=["a"], customdata=[0], stackgroup="one"))
    fig.add_shape(type="rect", x0=0, x1=1, y0=0, y1=1)
    fig.add_hline(y=0, annotation_text="a")
    style(fig, "", note="a")
    from ssmlens.dashboards import analysis  # torch's first matmul and numpy's first eigh pay set-up costs

    analysis.implicit_attention(np.ones((2, 1)), -np.ones((1, 1)), np.ones((2, 1)), np.ones((2, 1)))
    analysis.pca_2d(np.eye(3))
