"""The evaluation report's figures, each with a one-sentence caption computed from the
numbers it shows (``ssmlens.probes.report`` assembles them).

Every function takes ``ModelView``s (one per architecture × width: the best cell of the
learning-rate sweep, its summary row and its run store) and returns ``(figure,
caption)``; a figure with nothing to show returns ``(None, reason)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

ROLE_SHORT = {"queried_key": "key", "queried_value": "value", "query": "query", "last": "last"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
FONT = dict(family="Helvetica, Arial, sans-serif", size=12)


@dataclass
class ModelView:
    """One model of the report: the best cell of an architecture × width."""

    label: str
    family: str
    width: int
    row: dict  # the cell's summary numbers
    run: Any  # its ssmlens.interp.store.Run

    @property
    def name(self) -> str:
        return f"{self.label} w{self.width}"

    @property
    def acc(self) -> float:
        return float(self.row.get("acc", float("nan")))

    def result(self, name: str):
        return self.run.result(name) if name in self.results else None

    @property
    def results(self) -> list[str]:
        if not hasattr(self, "_results"):
            self._results = self.run.results()
        return self._results


def pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.0f}%"


def num(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"


def join(items: list[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _style(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=15)), template="plotly_white", font=FONT,
                      height=height, margin=dict(l=60, r=30, t=70, b=50))
    return fig


def _colors(labels: list[str]) -> dict[str, str]:
    return {l: PALETTE[i % len(PALETTE)] for i, l in enumerate(dict.fromkeys(labels))}


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


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


# ---- B'MOJO memory -------------------------------------------------------------------------


def memory_figures(views: list[ModelView]) -> list[tuple[go.Figure | None, str]]:
    have = [v for v in views if v.result("memory/recall_vs_size") is not None]
    if not have:
        return []
    fig = go.Figure()
    colors = _colors([v.name for v in have])
    parts = []
    for v in have:
        da = v.result("memory/recall_vs_size")
        sizes = [int(s) for s in da["memory_size"].values]
        fig.add_trace(go.Scatter(x=[str(s) for s in sizes], y=da.values, mode="lines+markers", name=v.name,
                                 line=dict(color=colors[v.name])))
        trained = int(da.attrs.get("trained_memory_size", sizes[-1]))
        parts.append(f"{v.name} {pct(float(da.sel(memory_size=trained)))} with its {trained}-token memory and "
                     f"{pct(float(da.sel(memory_size=0)))} without (share {num(float(v.row.get('memory_share')))})")
    fig.update_xaxes(title_text="eidetic memory size at evaluation (tokens)", type="category")
    fig.update_yaxes(title_text="answer accuracy", range=[0, 1.05])
    out = [(_style(fig, "B'MOJO: recall vs eidetic memory size", 380),
            f"Accuracy of the same weights with the memory limited at evaluation: {join(parts)}.")]
    writes = [(v, v.result("memory/writes")) for v in have]
    writes = [(v, w) for v, w in writes if w is not None]
    if writes:
        fig = go.Figure()
        bits = []
        for v, w in writes:
            last = int(w["layer"].values.max())
            roles = [str(r) for r in w["role"].values]
            fig.add_bar(x=roles, y=w.sel(layer=last).values, name=f"{v.name} L{last}",
                        marker_color=colors[v.name])
            get = {r: float(w.sel(layer=last, role=r)) for r in roles}
            bits.append(f"{v.name} writes {pct(get.get('queried_key', np.nan))} of queried keys and "
                        f"{pct(get.get('queried_value', np.nan))} of queried values")
        fig.update_layout(barmode="group")
        fig.update_yaxes(title_text="fraction written (last layer)", range=[0, 1.05])
        out.append((_style(fig, "B'MOJO: which tokens enter the eidetic memory", 380),
                    f"Write rates by role in the last layer: {join(bits)}."))
    where = memory_where(have)
    if where[0] is not None:
        out.append(where)
    return out


def memory_where(views: list[ModelView]) -> tuple[go.Figure | None, str]:
    """Where the memory holds the pair: accuracy with one role's write blocked (queried
    pair outside the window), and the repeat-key write patching with its write change."""
    have = [(v, v.result("memory/write_ablation"), v.result("memory/write_patching"),
             v.result("memory/write_change")) for v in views]
    have = [h for h in have if h[1] is not None or h[2] is not None]
    if not have:
        return None, ""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=[
        "accuracy with one write blocked (queried pair outside the window)",
        "repeat-key writes patched into the clean run (1 = no effect)"])
    colors = _colors([v.name for v, *_ in have])
    blocked, changed = [], []
    for v, ablation, patching, change in have:
        if ablation is not None:
            x = [f"L{l} {ROLE_SHORT.get(str(r), r)}" for l in ablation["layer"].values for r in ablation["role"].values]
            fig.add_bar(x=x, y=ablation.values.ravel(), name=v.name, marker_color=colors[v.name], row=1, col=1)
            base = float(ablation.attrs.get("baseline_acc", np.nan))
            worst = ablation.where(ablation == ablation.min(), drop=True)
            layer, role = int(worst["layer"].values[0]), str(worst["role"].values[0])
            blocked.append(f"in {v.name} blocking the {ROLE_SHORT.get(role, role)}'s write in layer {layer} takes "
                           f"accuracy from {pct(base)} to {pct(float(ablation.min()))}")
        if patching is not None and change is not None:
            restored = patching.sel(metric="restored")
            x = [f"L{l} {ROLE_SHORT.get(str(r), r)}" for l in restored["layer"].values for r in restored["role"].values]
            fig.add_bar(x=x, y=restored.values.ravel(), name=f"{v.name} (patching)", marker_color=colors[v.name],
                        showlegend=False, row=1, col=2)
            qk = change.sel(role="queried_key") if "queried_key" in change["role"].values.tolist() else None
            if qk is not None:
                changed.append(f"{pct(float(qk.max()))} of {v.name}'s queried-key writes")
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    caption = "; ".join(blocked) if blocked else "no example had its queried pair outside the window"
    if changed:
        caption += f"; repeating another pair's key at the queried key's position changes {join(changed)}"
    return _style(fig, "B'MOJO: where the memory holds the pair", 400), caption[0].upper() + caption[1:] + "."


# ---- token mixing --------------------------------------------------------------------------


def _mixing_view(da) -> np.ndarray:
    m = np.asarray(da.values, dtype=float)
    reduce = da.attrs.get("reduce") or ("mean" if da.attrs.get("group") == "head" else "abs_mean")
    return m.mean(0) if reduce == "mean" else np.abs(m).mean(0)


def mixing_grid(views: list[ModelView], token_labels: list[str] | None) -> tuple[go.Figure | None, str]:
    """Each model's token-mixing matrix of one example, every layer (heads averaged,
    channels as mean |α|), on one page."""
    items = []
    for v in views:
        for name in sorted((r for r in v.results if r.startswith("mixing/")), key=lambda s: int(s.split("L")[-1])):
            items.append((v, name, v.result(name)))
    if not items:
        return None, "no token-mixing matrices were stored"
    n_layers = max(int(n.split("L")[-1]) for _, n, _ in items) + 1
    models = list(dict.fromkeys(v.name for v, _, _ in items))
    fig = make_subplots(rows=len(models), cols=n_layers, horizontal_spacing=0.06,
                        vertical_spacing=min(0.08, 0.5 / max(1, len(models))),
                        subplot_titles=[f"{m} · L{l}" for m in models for l in range(n_layers)])
    shares = []
    for v, name, da in items:
        layer = int(name.split("L")[-1])
        z = _mixing_view(da)
        L = z.shape[0]
        cols = [str(c) for c in (da["k"].values if "k" in da.coords else range(z.shape[1]))]
        xl = [(token_labels[int(c)] if token_labels and c.isdigit() and int(c) < len(token_labels) else c)
              + f" {c}" if c.isdigit() else c for c in cols]
        yl = [(token_labels[i] if token_labels and i < len(token_labels) else "") + f" {i}" for i in range(L)]
        norm = z / max(np.abs(z).max(), 1e-12)
        fig.add_trace(go.Heatmap(z=norm, x=xl, y=yl, colorscale="Blues", zmin=0, zmax=1, showscale=False,
                                 hovertemplate=f"{v.name} L{layer}<br>query %{{y}} ← key %{{x}}: %{{z:.2f}} of the "
                                               "largest<extra></extra>"),
                      row=models.index(v.name) + 1, col=layer + 1)
        fig.update_yaxes(autorange="reversed", tickfont=dict(size=8), row=models.index(v.name) + 1, col=layer + 1)
        fig.update_xaxes(tickfont=dict(size=8), row=models.index(v.name) + 1, col=layer + 1)
        if layer == n_layers - 1 and token_labels and "query" in token_labels:
            q = token_labels.index("query")
            row = np.abs(z[q])
            vpos = [i for i, t in enumerate(token_labels) if t == "value*"]
            if vpos and row.sum() > 0:
                shares.append((v.name, float(row[vpos[0]] / row.sum())))
    caption = "Token-mixing matrices of one example, every model and layer (rows: queries, columns: keys; each " \
              "panel scaled to its largest entry; nonnegative patterns (softmax, Based) averaged over heads, " \
              "signed ones (SSM, H3, Hyena) as the mean |weight| over channels or heads)"
    if shares:
        shares.sort(key=lambda s: -s[1])
        caption += ("; at the query, the last layer gives the queried value (value*) "
                    + join([f"{pct(s)} of its weight in {n}" for n, s in shares]))
    return _style(fig, "Token mixing of one example", 120 + 230 * len(models)), caption + "."


# ---- diagnostics ----------------------------------------------------------------------------


def diagnostics_figure(views: list[ModelView], recall_threshold: float) -> tuple[go.Figure | None, str]:
    have = [v for v in views if v.result("diagnostics/horizon") is not None]
    if not have:
        return None, "no model of the suite has an SSM or long-convolution layer"
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.1,
                        subplot_titles=["memory horizon per channel, head or filter (tokens, all layers)",
                                        "input dependence of Δ vs accuracy"])
    for v in have:
        h = np.asarray(v.result("diagnostics/horizon").values, dtype=float).ravel()
        ok = v.acc >= recall_threshold
        fig.add_trace(go.Box(y=h, name=v.name, boxpoints=False, marker_color="#2ca02c" if ok else "#d62728",
                             showlegend=False), row=1, col=1)
        share = float(v.row.get("diag_input_share", np.nan))
        if np.isfinite(share):  # Hyena has no Δ
            fig.add_trace(go.Scatter(x=[share], y=[v.acc], mode="markers+text", text=[v.name],
                                     textposition="top center", showlegend=False,
                                     marker=dict(size=10, color="#2ca02c" if ok else "#d62728")), row=1, col=2)
    fig.update_yaxes(type="log", title_text="tokens", row=1, col=1)
    fig.update_xaxes(title_text="Δ input share (token variance / total)", row=1, col=2)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.1], row=1, col=2)
    good = [v for v in have if v.acc >= recall_threshold]
    bad = [v for v in have if v.acc < recall_threshold]

    def med(vs, key):
        values = [float(v.row.get(key, np.nan)) for v in vs]
        values = [x for x in values if np.isfinite(x)]
        return float(np.median(values)) if values else float("nan")

    parts = []
    for name, vs in (("that recall", good), ("that do not recall", bad)):
        if vs:
            share = med(vs, "diag_input_share")
            parts.append(f"the {len(vs)} model{'s' if len(vs) > 1 else ''} {name} have a median horizon of "
                         f"{med(vs, 'diag_median_horizon'):.1f} tokens"
                         + (f" and a Δ input share of {num(share)}" if np.isfinite(share) else ""))
    abscissae = [float(v.row.get("diag_abscissa", np.nan)) for v in have]
    abscissae = [a for a in abscissae if np.isfinite(a)]
    caption = (f"SSM and long-convolution layers (green: accuracy ≥ {pct(recall_threshold)}, red: below; "
               f"H3's Δ is fixed, so its input share is 0; Hyena's horizon is its filters' mass lag): "
               f"{'; '.join(parts)}")
    if abscissae:
        stable = "negative in every layer, so every recurrence is stable" if max(abscissae) < 0 \
            else "not negative everywhere"
        caption += f"; A's spectral abscissa is {stable} (max {max(abscissae):.3g})"
    return _style(fig, "Stability and memory diagnostics", 430), caption + "."
