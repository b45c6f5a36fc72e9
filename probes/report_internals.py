"""The evaluation report's figures of the models' internals, each with a one-sentence
caption computed from the numbers it shows (``ssmlens.probes.report`` assembles them):
B'MOJO's eidetic memory (recall vs memory size, write rates, where the pair is held),
the token-mixing matrices of one example, and the stability and memory diagnostics.

Every function takes ``ModelView``s (``ssmlens.probes.report_base``) and returns
``(figure, caption)`` (``memory_figures``: a list of them); a figure with nothing to
show returns ``(None, reason)`` (``memory_figures``: an empty list).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ssmlens.probes.report_base import ROLE_SHORT, ModelView, _colors, _style, join, num, pct

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
