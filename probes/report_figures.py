"""The evaluation report's figures of accuracy and interventions, each with a
one-sentence caption computed from the numbers it shows (``ssmlens.probes.report``
assembles them): accuracy vs width, interchange interventions by role, the
association test and the short-convolution ablation. The figures of the models'
internals (memory, token mixing, diagnostics) are ``ssmlens.probes.report_internals``.

Every function takes ``ModelView``s (one per architecture × width: the best cell of the
learning-rate sweep, its summary row and its run store; ``ssmlens.probes.report_base``)
and returns ``(figure, caption)``; a figure with nothing to show returns
``(None, reason)``.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ssmlens.probes.report_base import ROLE_SHORT, ModelView, _colors, _grid, _style, join, num, pct

# ---- accuracy vs width -----------------------------------------------------------------------


def accuracy_vs_width(cells, recall_threshold: float) -> tuple[go.Figure | None, str]:
    """Best accuracy over the sweep per architecture and width; every cell as a faint dot."""
    done = cells[cells["status"] == "done"] if "acc" in cells else cells.iloc[0:0]
    if done.empty:
        return None, "no cell finished, so there is no accuracy to plot"
    fig = go.Figure()
    colors = _colors(list(done["label"]))
    parts = []
    for label, part in done.groupby("label", sort=False):
        best = part.groupby("width")["acc"].max().sort_index()
        fig.add_trace(go.Scatter(x=best.index.astype(str), y=best.values, mode="lines+markers", name=label,
                                 line=dict(color=colors[label], width=2.5), marker=dict(size=9)))
        fig.add_trace(go.Scatter(x=part["width"].astype(str), y=part["acc"], mode="markers", showlegend=False,
                                 marker=dict(color=colors[label], size=6, opacity=0.35),
                                 text=[f"lr {lr:g}, seed {s}" for lr, s in zip(part["lr"], part["seed"])],
                                 hovertemplate=f"{label} w%{{x}}: %{{y:.3f}} (%{{text}})<extra></extra>"))
        widths = [int(w) for w in best.index]
        good = [w for w, a in zip(widths, best.values) if a >= recall_threshold]
        if good:
            parts.append(f"{label} reaches {pct(recall_threshold)} from width {good[0]} "
                         f"({pct(best.values[widths.index(good[0])])})")
        else:
            top = int(np.argmax(best.values))
            parts.append(f"{label} stays below {pct(recall_threshold)} (best {pct(best.values[top])} at width "
                         f"{widths[top]})")
    chance = float(done["chance"].iloc[0]) if "chance" in done and np.isfinite(done["chance"].iloc[0]) else None
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", line_color="#888", annotation_text="chance (1 / pairs)",
                      annotation_position="bottom right")
    fig.update_xaxes(title_text="width (d_model)", type="category")
    fig.update_yaxes(title_text="answer accuracy (best over the sweep)", range=[0, 1.05])
    caption = f"Held-out answer accuracy at each width, best over the learning-rate sweep: {join(parts)}."
    return _style(fig, "Accuracy vs width", 420), caption


# ---- interventions -------------------------------------------------------------------------


def _role_grid(view: ModelView, components: list[str], prefix: str = "interchange",
               metric: str = "iia") -> tuple[np.ndarray, list[str], list[str]]:
    """``[component·layer, role]`` values of ``<prefix>/<component>`` results."""
    rows, ylabels, roles = [], [], None
    for comp in components:
        da = view.result(f"{prefix}/{comp}")
        if da is None:
            continue
        da = da.sel(metric=metric)
        roles = [str(r) for r in da["role"].values]
        for layer in da["layer"].values.tolist():
            rows.append(da.sel(layer=layer).values.astype(float))
            ylabels.append(f"{comp} · L{layer}")
    if not rows:
        return np.zeros((0, 0)), [], []
    return np.stack(rows), ylabels, [ROLE_SHORT.get(r, r) for r in roles]


def _role_heatmaps(grids, metric: str, signed: bool) -> go.Figure:
    """One heatmap panel per model (component·layer × role) on one colour scale."""
    nr, nc = _grid(len(grids))
    fig = make_subplots(rows=nr, cols=nc, subplot_titles=[f"{v.name} (acc {pct(v.acc)})" for v, *_ in grids],
                        horizontal_spacing=0.09, vertical_spacing=0.12 if nr > 1 else 0.1)
    scale = dict(zmin=-1, zmax=1, colorscale="RdBu", reversescale=True) if signed else \
        dict(zmin=0, zmax=1, colorscale="Viridis")
    for i, (v, z, ylab, xlab) in enumerate(grids):
        r, c = divmod(i, nc)
        fig.add_trace(go.Heatmap(z=z, x=xlab, y=ylab, showscale=i == 0, colorbar=dict(title=metric, len=0.5),
                                 hovertemplate=f"{v.name}<br>%{{y}} @ %{{x}}: {metric} %{{z:.2f}}<extra></extra>",
                                 **scale), row=r + 1, col=c + 1)
        fig.update_yaxes(autorange="reversed", tickfont=dict(size=10), row=r + 1, col=c + 1)
    tallest = max(len(g[2]) for g in grids)
    fig.update_layout(height=110 + nr * (70 + 20 * tallest))
    return fig


def interchange_heatmaps(views: list[ModelView], components: list[str], threshold: float
                         ) -> tuple[go.Figure | None, str]:
    """IIA of value interchanges, component·layer × role, one panel per model."""
    grids = [(v, *_role_grid(v, components)) for v in views]
    grids = [g for g in grids if g[1].size]
    if not grids:
        return None, "no interchange results were stored"
    fig = _role_heatmaps(grids, "IIA", signed=False)
    carried, moved, neither = [], [], []
    for v, *_ in grids:
        last = int(v.row.get("locus_layer", -1))
        if last < 1:
            continue
        val, q = float(v.row.get(f"iia_value_L{last}", np.nan)), float(v.row.get(f"iia_query_L{last}", np.nan))
        if val >= threshold:
            carried.append(f"{v.name} ({num(val)})")
        elif q >= threshold:
            moved.append(f"{v.name} ({num(q)})")
        else:
            neither.append(f"{v.name} ({num(max(val, q))})")
    parts = []
    if carried:
        parts.append(f"the value's own position still decides the answer at the last block's input in "
                     f"{join(carried)}")
    if moved:
        parts.append(f"the query position does instead in {join(moved)}")
    if neither:
        parts.append(f"neither reaches IIA {num(threshold)} in {join(neither)}")
    caption = ("Interchange intervention accuracy (the model answers the source's value v′) when one site takes "
               "its activation from the value-corrupted run; " + ("; ".join(parts) or "no site of a later block "
                                                                  "carries the value") + ".")
    return _style(fig, "Interchange interventions by role (value corruption)", fig.layout.height), caption


def association_heatmaps(views: list[ModelView], components: list[str], threshold: float
                         ) -> tuple[go.Figure | None, str]:
    """Restored fraction under key corruption, component·layer × role, one panel per model."""
    grids = [(v, *_role_grid(v, components, "association", "restored")) for v in views]
    grids = [g for g in grids if g[1].size]
    if not grids:
        return None, "no association test was stored"
    fig = _role_heatmaps(grids, "restored", signed=True)
    strongest, binds, not_binds = [], [], []
    for v, z, ylab, xlab in grids:
        if v.acc < 0.5 * (1 + float(v.row.get("chance", 0) or 0)):
            continue  # a model near chance: restored fractions measure noise
        # the corrupted key's own position in block 0 restores trivially (its token differs there)
        masked = np.where([[lab.endswith("L0") and role == "key" for role in xlab] for lab in ylab], np.nan, z)
        if np.isfinite(masked).any():
            i, j = np.unravel_index(np.nanargmax(masked), masked.shape)
            strongest.append(f"{ylab[i]} at the {xlab[j]} in {v.name} ({num(float(masked[i, j]))})")
        c = float(v.row.get("assoc_conv_value", np.nan))
        if np.isfinite(c):
            (binds if c >= threshold else not_binds).append(f"{v.name} ({num(c)})")
    parts = []
    if strongest:
        parts.append("beyond the corrupted key's own position in block 0, the strongest site is " + join(strongest))
    if binds:
        parts.append(f"the clean short-conv output at the value position alone restores the answer in {join(binds)} "
                     "(the conv binds the key into the value's position: induction through the conv)")
    if not_binds:
        parts.append(f"the short-conv output at the value position does not restore it in {join(not_binds)}")
    caption = ("Restored fraction of p(answer) when one clean activation is patched into the key-corrupted run, by "
               "component, layer and role" + ("; " + "; ".join(parts) if parts else
                                              " (no model recalls well enough to read it)") + ".")
    return _style(fig, "Association test by component (key corruption)", fig.layout.height), caption


def association_bars(views: list[ModelView], threshold: float) -> tuple[go.Figure | None, str]:
    """Restored fraction at the last block's input by role, per model (key corruption)."""
    have = [v for v in views if "assoc_queried_value" in v.row]
    if not have:
        return None, "no association test was stored"
    def recalls(v: ModelView) -> bool:  # restored fractions of a model near chance measure noise
        return float(v.row.get("acc", 0)) >= 0.5 * (1 + float(v.row.get("chance", 0) or 0))

    fig = go.Figure()
    values = []
    for role, color in (("queried_key", "#9467bd"), ("queried_value", "#d62728"), ("query", "#1f77b4")):
        y = [float(v.row.get(f"assoc_{role}", np.nan)) for v in have]
        values += y
        fig.add_bar(x=[v.name for v in have], y=y, name=ROLE_SHORT[role], marker_color=color,
                    marker_opacity=[1.0 if recalls(v) else 0.3 for v in have])
    fig.add_hline(y=threshold, line_dash="dot", line_color="#888")
    fig.update_layout(barmode="group")
    finite = [x for x in values if np.isfinite(x)] or [0.0]
    fig.update_yaxes(title_text="restored p(answer), last block input (faint: no recall)",
                     range=[max(-2.0, min(-0.2, min(finite) - 0.1)), min(2.0, max(1.2, max(finite) + 0.1))])
    groups: dict[str, list[str]] = {}
    weak = []
    for v in have:
        if not recalls(v):
            weak.append(v.name)
            continue
        groups.setdefault(str(v.row.get("locus", "n/a")), []).append(v.name)
    text = {"value (induction)": "at the value position (the pair is bound there: induction-like)",
            "key (last state)": "only from the key position (the last block's state binds the pair)",
            "query (retrieved below)": "at the query (lower blocks already retrieved it)",
            "unclear": "at no single position (no role restores half)"}
    parts = [f"{text.get(k, k)} in {join(v)}" for k, v in groups.items()]
    caption = "With the queried key replaced in context, patching the clean residual stream at the last block's input"
    caption += f" restores the answer {'; '.join(parts)}" if parts else " was not read for any model"
    if weak:
        caption += (f"{'; not read for' if parts else ':'} {join(weak)}, whose accuracy is less than halfway "
                    "from chance to 1")
    caption += "."
    return _style(fig, "Association test: where the key–value pair is bound", 420), caption


def conv_ablation_bars(views: list[ModelView]) -> tuple[go.Figure | None, str]:
    have = [v for v in views if np.isfinite(float(v.row.get("acc_no_conv", np.nan)))]
    if not have:
        return None, "no model of the suite has a short convolution"
    fig = go.Figure()
    fig.add_bar(x=[v.name for v in have], y=[v.acc for v in have], name="as trained", marker_color="#1f77b4")
    fig.add_bar(x=[v.name for v in have], y=[float(v.row["acc_no_conv"]) for v in have],
                name="short conv → current tap only", marker_color="#ff7f0e")
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="answer accuracy", range=[0, 1.05])
    drops = sorted(have, key=lambda v: v.acc - float(v.row["acc_no_conv"]), reverse=True)
    parts = [f"{v.name} {pct(v.acc)} → {pct(float(v.row['acc_no_conv']))}"
             + (" (shift SSM removed)" if v.row.get("conv_ablation") == "no_shift" else "") for v in drops]
    caption = f"Accuracy with every short convolution reduced to its current-token tap: {join(parts)}."
    return _style(fig, "Short-convolution ablation", 400), caption
