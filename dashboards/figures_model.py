"""Figures tied to one example: tokens with roles, per-token strips, state trajectories,
B'MOJO attention parts. Pure functions of numpy arrays (plus the example's tokens and
roles) -> plotly figures.

Clickable figures carry the token position in ``customdata`` so that one callback
turns any click into "select this token", whatever the figure's geometry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ssmlens.dashboards.figures import COLORS, downsample, mark_position, message, style

ROLE_COLORS = {
    "": "#f4f4f4", "noise": "#e6e6e6", "last": "#d9d9d9", "key": "#6baed6", "value": "#74c476",
    "query": "#fd8d3c", "answer": "#e7298a", "queried_key": "#c6dbef", "queried_value": "#c7e9c0",
}
GRID_WIDTH = 32  # tokens per row of the token grid


def _role_scale(roles: list[str]) -> tuple[list[str], list[list]]:
    """Categories present (stable order) and a discrete colorscale over their indices."""
    cats = [r for r in ROLE_COLORS if r in set(roles)] + sorted(set(roles) - set(ROLE_COLORS))
    n = max(len(cats), 1)
    scale = []
    for i, c in enumerate(cats):
        color = ROLE_COLORS.get(c, COLORS[i % len(COLORS)])
        scale += [[i / n, color], [(i + 1) / n, color]]
    return cats, scale or [[0, "#f4f4f4"], [1, "#f4f4f4"]]


def token_grid(tokens: np.ndarray, roles: list[str], selected: int | None, *,
               width: int = GRID_WIDTH, title: str = "Tokens") -> go.Figure:
    """The example as text, ``width`` tokens a row, cells coloured by role; click to select."""
    L = len(tokens)
    rows = -(-L // width)
    cats, scale = _role_scale(roles)
    z = np.full((rows, width), np.nan)
    text = np.full((rows, width), "", dtype=object)
    pos = np.full((rows, width), -1)
    hover = np.full((rows, width), "", dtype=object)
    for p in range(L):
        r, c = divmod(p, width)
        z[r, c] = cats.index(roles[p]) + 0.5  # mid-cell of the discrete colour scale
        text[r, c] = str(int(tokens[p]))
        pos[r, c] = p
        hover[r, c] = f"pos {p}<br>token {int(tokens[p])}<br>{roles[p] or 'other'}"
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", textfont={"size": 10}, customdata=pos,
        hovertext=hover, hoverinfo="text", colorscale=scale, zmin=0, zmax=len(cats),
        showscale=False, xgap=1, ygap=1,
    ))
    # A legend of the roles: invisible points, one per role present.
    for c in cats:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=c or "other",
                                 marker={"color": ROLE_COLORS.get(c, "#999"), "size": 12, "symbol": "square"}))
    if selected is not None and 0 <= selected < L:
        r, c = divmod(int(selected), width)
        fig.add_shape(type="rect", x0=c - 0.5, x1=c + 0.5, y0=r - 0.5, y1=r + 0.5,
                      line={"color": "#d62728", "width": 3})
    fig.update_xaxes(visible=False, range=[-0.5, width - 0.5])
    fig.update_yaxes(autorange="reversed", tickvals=list(range(rows)),
                     ticktext=[str(r * width) for r in range(rows)], title_text="position")
    fig.update_layout(legend={"orientation": "h", "y": -0.05})
    return style(fig, title, height=max(220, 26 * rows + 120),
                 note="click a token to select it on every page")


def scalar_strips(values: Mapping[str, np.ndarray], tokens: np.ndarray, roles: list[str],
                  selected: int | None, *, title: str, colorbar: str = "") -> go.Figure:
    """One colour strip per layer (rows) over positions, under a strip of roles."""
    if not values:
        return message("this run has no per-token values of that kind", title)
    L = len(tokens)
    names = list(values)
    z = np.stack([np.asarray(values[n], dtype=float)[:L] for n in names])
    cats, scale = _role_scale(roles)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.12, 0.88], vertical_spacing=0.03)
    custom = np.arange(L)
    fig.add_trace(go.Heatmap(
        z=[[cats.index(r) + 0.5 for r in roles]], x=custom, y=["role"], colorscale=scale, zmin=0, zmax=len(cats),
        showscale=False, customdata=[custom], hovertext=[[f"pos {p} · token {int(tokens[p])} · {roles[p] or 'other'}"
                                                         for p in range(L)]], hoverinfo="text",
    ), row=1, col=1)
    fig.add_trace(go.Heatmap(
        z=z, x=custom, y=names, colorscale="Viridis", customdata=np.tile(custom, (len(names), 1)),
        colorbar={"title": {"text": colorbar}, "len": 0.85, "y": 0.42},
        hovertemplate="%{y}<br>pos %{x}<br>%{z:.4g}<extra></extra>",
    ), row=2, col=1)
    fig.update_yaxes(type="category", row=2, col=1)
    fig.update_xaxes(title_text="position", row=2, col=1)
    mark_position(fig, selected)
    return style(fig, title, height=140 + 40 * len(names))


def trajectory_pca(coords: np.ndarray, ratio: np.ndarray, tokens: np.ndarray, roles: list[str],
                   selected: int | None, *, title: str) -> go.Figure:
    """The state trajectory in its first two principal components; role positions and
    the selected token carry their token as a label, every point its hover text."""
    L = len(coords)
    fig = go.Figure(go.Scatter(x=coords[:, 0], y=coords[:, 1], mode="lines", line={"color": "#bbb", "width": 1},
                               hoverinfo="skip", showlegend=False))
    cats = [r for r in ROLE_COLORS if r in set(roles)] + sorted(set(roles) - set(ROLE_COLORS))
    for c in cats:
        idx = [p for p in range(L) if roles[p] == c]
        labelled = c in ("key", "value", "query", "answer")
        fig.add_trace(go.Scatter(
            x=coords[idx, 0], y=coords[idx, 1], mode="markers+text" if labelled else "markers",
            text=[str(int(tokens[p])) for p in idx], textposition="top center", textfont={"size": 9},
            customdata=idx, name=c or "other",
            marker={"color": ROLE_COLORS.get(c, "#999"), "size": 8 if labelled else 5,
                    "line": {"width": 0.5, "color": "#555"}},
            hovertemplate="pos %{customdata} · token %{text}<extra>" + (c or "other") + "</extra>",
        ))
    if selected is not None and 0 <= selected < L:
        fig.add_trace(go.Scatter(x=[coords[selected, 0]], y=[coords[selected, 1]], mode="markers+text",
                                 text=[f"pos {selected}"], textposition="bottom center", customdata=[selected],
                                 marker={"size": 16, "color": "rgba(0,0,0,0)",
                                         "line": {"width": 2.5, "color": "#d62728"}},
                                 name="selected", hoverinfo="skip"))
    fig.update_xaxes(title_text=f"PC1 ({100 * ratio[0]:.0f}% of variance)")
    fig.update_yaxes(title_text=f"PC2 ({100 * ratio[1]:.0f}%)")
    return style(fig, title, height=420)


def bmojo_pattern(parts, *, title: str, head_label: str, selected: int | None,
                  max_cells: int = 120_000) -> go.Figure:
    """A B'MOJO pattern as three panels on one scale: window columns, eidetic-memory
    columns (the same token axis, zero inside the window) and the fading column."""
    window, memory, fading = (np.asarray(p, dtype=float) for p in parts[:3])
    L = window.shape[0]
    fig = make_subplots(rows=1, cols=3, column_widths=[0.46, 0.46, 0.08], shared_yaxes=True,
                        horizontal_spacing=0.03,
                        subplot_titles=["window (eidetic, recent)", "eidetic memory (written tokens)", "fading"])
    hi = float(max(window.max(initial=0), memory.max(initial=0), fading.max(initial=0))) or 1.0
    notes = []
    for col, (name, z) in enumerate((("window", window), ("memory", memory)), start=1):
        small, (fy, fx) = downsample(z, max_cells)
        small = small.astype(np.float32)
        if (fy, fx) != (1, 1):
            notes.append(f"{name} downsampled {L}×{L} → {small.shape[0]}×{small.shape[1]}")
        fig.add_trace(go.Heatmap(z=small, x=np.arange(0, L, fx), y=np.arange(0, L, fy), zmin=0, zmax=hi,
                                 colorscale="Viridis", showscale=False, customdata=None,
                                 hovertemplate=f"{name}<br>query %{{y}}<br>key %{{x}}<br>%{{z:.3g}}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(title_text="key position", row=1, col=col)
    fig.add_trace(go.Heatmap(z=fading[:, None], x=["f_t"], y=np.arange(L), zmin=0, zmax=hi, colorscale="Viridis",
                             colorbar={"title": {"text": "weight"}},
                             hovertemplate="fading token<br>query %{y}<br>%{z:.3g}<extra></extra>"), row=1, col=3)
    fig.update_yaxes(autorange="reversed", title_text="query position", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=3)
    if selected is not None:
        mark_position(fig, selected, axis="y")
    return style(fig, f"{title} · {head_label}", height=460, note="; ".join(notes) or None)


def parts_mass(window: np.ndarray, memory: np.ndarray, fading: np.ndarray, *, title: str,
               selected: int | None) -> go.Figure:
    """Per query, how the attention splits between window, eidetic memory and fading token."""
    x = np.arange(len(fading))
    fig = go.Figure()
    for name, y, color in (("window", window.sum(-1), "#6baed6"), ("eidetic memory", memory.sum(-1), "#fd8d3c"),
                           ("fading", fading, "#74c476")):
        fig.add_trace(go.Scatter(x=x, y=y, name=name, stackgroup="one", mode="lines", line={"color": color}))
    fig.update_xaxes(title_text="query position")
    fig.update_yaxes(title_text="attention mass", range=[0, 1.02])
    mark_position(fig, selected)
    return style(fig, title, height=320)


def attention_row(row: np.ndarray, window_mask_row: np.ndarray | None, *, title: str,
                  tokens: np.ndarray, roles: list[str]) -> go.Figure:
    """One query's attention over key positions, bars coloured by where the key sits."""
    L = len(tokens)
    weights = np.asarray(row, dtype=float)
    token_w = weights[:L]
    if window_mask_row is None:
        kinds = np.array(["key"] * L)
    else:
        kinds = np.where(window_mask_row, "window", "eidetic memory")
    fig = go.Figure()
    for kind, color in (("key", COLORS[0]), ("window", "#6baed6"), ("eidetic memory", "#fd8d3c")):
        idx = np.flatnonzero(kinds == kind)
        if idx.size:
            fig.add_trace(go.Bar(x=idx, y=token_w[idx], name=kind, marker_color=color,
                                 customdata=[f"token {int(tokens[p])} · {roles[p] or 'other'}" for p in idx],
                                 hovertemplate="key %{x}<br>%{customdata}<br>%{y:.3g}<extra></extra>"))
    if weights.shape[0] == L + 1:
        fig.add_trace(go.Bar(x=[L + 1], y=[weights[L]], name="fading", marker_color="#74c476",
                             hovertemplate="fading token<br>%{y:.3g}<extra></extra>"))
    fig.update_xaxes(title_text="key position")
    fig.update_yaxes(title_text="weight")
    fig.update_layout(bargap=0)
    return style(fig, title, height=300)


def innovation_figure(series: Mapping[str, np.ndarray], writes: Mapping[str, np.ndarray],
                      threshold: float | None, selected: int | None, *, title: str) -> go.Figure:
    """Innovation scores per layer over positions; written tokens as markers; τ dashed."""
    fig = go.Figure()
    for i, (name, z) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        fig.add_trace(go.Scatter(x=np.arange(len(z)), y=z, mode="lines", name=f"{name} innovation",
                                 line={"color": color, "width": 1.2}))
        w = writes.get(name)
        if w is not None:
            idx = np.flatnonzero(np.asarray(w) > 0.5)
            fig.add_trace(go.Scatter(x=idx, y=np.asarray(z)[idx], mode="markers", name=f"{name} written",
                                     marker={"color": color, "symbol": "triangle-up", "size": 8}))
    if threshold is not None and np.isfinite(threshold):
        fig.add_hline(y=threshold, line={"dash": "dash", "color": "gray"}, annotation_text=f"τ = {threshold:g}")
    fig.update_xaxes(title_text="position")
    fig.update_yaxes(title_text="z_t (standardized innovation)")
    mark_position(fig, selected)
    return style(fig, title, height=330)


def role_ticks(roles: Sequence[str], keep: tuple[str, ...] = ("key", "value", "query", "answer")):
    """Tick values/labels that mark role positions on a position axis ("k 4", "q 130")."""
    vals = [p for p, r in enumerate(roles) if r in keep]
    return vals, [f"{roles[p][0]} {p}" for p in vals]
