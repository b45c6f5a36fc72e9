"""Gating: how Mamba's input-dependent step size Δ and projections B, C behave.

- Δ as a heatmap over position × channel for one layer, channels in index order, by
  mean Δ, or by effective memory horizon 1/(Δ·|A|) (A = −exp(A_log) read from the
  run's checkpoint with safetensors; no model is built);
- B and C over positions (d_state rows each);
- the histogram of horizons over channels × states (log scale, in tokens).

A Hyena run (no Δ) shows its long filters instead (``ssmlens.dashboards.figures_zoo``).

Callbacks: ``gating_layers``, ``gating_render``.
"""

from __future__ import annotations

import numpy as np
from dash import Input, Output, State, html

from ssmlens.dashboards import analysis, figures, figures_zoo
from ssmlens.dashboards.components import (
    control, dropdown, fig_id, figure_card, layer_options, page_header, radio, row, status,
)
from ssmlens.dashboards.context import Context, status_message
from ssmlens.dashboards.reader import RunAccessError

NAME = "gating"
PATH = "/gating"
TITLE = "Gating"
DELTA = "mixer.hook_delta"
SORTS = [("index", "channel index"), ("delta", "mean Δ"), ("horizon", "memory horizon 1/(Δ·|A|)")]


def render(ctx: Context, run, example, token, layer, sort):
    """(Δ heatmap, B/C panels, horizon histogram, status) for one layer of one example."""
    reader = ctx.reader
    layers = reader.layers_with(run, DELTA)
    if not layers and figures_zoo.filter_layers(reader, run):
        return (*figures_zoo.hyena_gating(reader, run, layer), None)
    if not layers:
        text = "this run cached no Δ (mixer.hook_delta): it has no selective SSM layers"
        return figures.message(text), figures.message(text), figures.message(text), status_message(text, "info")
    layer = layer if layer in layers else layers[0]
    ex = reader.example(run, example)
    sel = token if isinstance(token, int) and 0 <= token < ex.seq_len else None
    delta = reader.layer_hook(run, DELTA, layer, example)  # [pos, d_inner]
    notes = []
    try:
        A = reader.a_matrix(run, layer)
        if A.shape[0] != delta.shape[1]:
            raise RunAccessError(f"A has {A.shape[0]} channels but Δ has {delta.shape[1]}: "
                                 "checkpoint and run disagree")
        per_state, per_channel = analysis.memory_horizon(delta, A)
    except RunAccessError as e:
        per_state = per_channel = None
        notes.append(str(e))
    if sort == "horizon" and per_channel is None:
        sort = "delta"
        notes.append("sorted by mean Δ instead")
    order = analysis.channel_order(delta, sort or "index", per_channel)
    z = np.asarray(delta)[:, order].T  # [channel, pos]
    title = f"Δ, layer {layer} (channels by {dict(SORTS).get(sort, 'index')})"
    heat = figures.heatmap(z, np.arange(z.shape[1]), [str(c) for c in order], title=title, xlabel="position",
                           ylabel="channel", colorscale="Viridis", colorbar="Δ", height=460)
    heat.update_yaxes(type="category", showticklabels=len(order) <= 64)
    figures.mark_position(heat, sel)
    bc = _bc_panels(reader, run, layer, example, sel)
    if per_state is None:
        hist = figures.message("memory horizon needs A from the run's checkpoint", "Memory horizon")
    else:
        med = float(np.median(per_channel[np.isfinite(per_channel)])) if np.isfinite(per_channel).any() else np.nan
        hist = figures.histogram(per_state, title=f"Memory horizon 1/(mean Δ·|A|), layer {layer}",
                                 xlabel="tokens (log scale)", log_x=True,
                                 note=f"{per_state.size} channel×state pairs; median channel horizon "
                                      f"{med:.3g} tokens (its slowest state)")
        hist.add_vline(x=np.log10(max(ex.seq_len, 1)), line={"dash": "dash", "color": "gray"},
                       annotation_text="sequence length")
    return heat, bc, hist, status_message("; ".join(notes), "info") if notes else None


def _bc_panels(reader, run, layer, example, sel):
    panels = []
    for name in ("B", "C"):
        hook = f"blocks.{layer}.mixer.hook_{name}"
        if hook in reader.hooks(run):
            v = reader.hook(run, hook, example)  # [pos, d_state]
            panels.append((name, v.T, np.arange(v.shape[0]), np.arange(v.shape[1])))
    if not panels:
        return figures.message("B and C were not cached for this layer", "B and C")
    fig = figures.heatmap_panels(panels, title=f"B and C over positions, layer {layer}", xlabel="position",
                                 ylabel="state n", height=340)
    return figures.mark_position(fig, sel)


def layers(ctx: Context, run, current):
    found = ctx.reader.layers_with(run, DELTA) or figures_zoo.filter_layers(ctx.reader, run)
    return layer_options(found), current if current in found else (found[0] if found else None)


def layout(ctx: Context, run: str | None) -> html.Div:
    options, value = [], None
    if run:
        try:
            options, value = layers(ctx, run, None)
        except RunAccessError:
            pass
    return html.Div([
        page_header("Gating", "Mamba's step size Δ per channel and position, the input-dependent B and C, and how "
                    "long each channel remembers: the horizon 1/(Δ·|A|) in tokens. Hyena runs: its "
                    "implicit long filters over lag."),
        row(control("layer", dropdown("gating-layer", options, value), width="160px"),
            control("sort channels by", radio("gating-sort", SORTS, "index"))),
        status("gating-status"),
        figure_card("gating-delta"),
        html.Div(className="ssm-cards", children=[figure_card("gating-bc", width="calc(60% - 10px)"),
                                                   figure_card("gating-horizon", width="40%")]),
    ])


def register(app, ctx: Context) -> None:
    ctx.callback(app, "gating_layers", [Output("gating-layer", "options"), Output("gating-layer", "value")],
                 [Input("run-select", "value")], [State("gating-layer", "value")],
                 prevent_initial_call=True)(lambda run, cur: layers(ctx, run, cur))
    ctx.callback(app, "gating_render",
                 [Output(fig_id(n), "figure") for n in ("gating-delta", "gating-bc", "gating-horizon")]
                 + [Output("gating-status", "children")],
                 [Input("run-select", "value"), Input("example-input", "value"), Input("token-input", "value"),
                  Input("gating-layer", "value"), Input("gating-sort", "value")])(lambda *a: render(ctx, *a))
