"""States: Mamba's hidden state over the sequence, and the attention it implies.

- ‖h_t‖ over positions, one line per layer;
- the state trajectory of one layer in its first two principal components, tokens as
  labels (click a point to select its token);
- Mamba's implicit attention matrix (decay-weighted C·B products, reduced over
  channels; ``ssmlens.dashboards.analysis.implicit_attention``) next to a real attention
  pattern: the selected run's own when it has one (B'MOJO), else a run chosen in
  "real attention from" (by default a run on the same task that cached patterns).

Based runs show their kv-state S_t in place of h_t (``ssmlens.dashboards.figures_zoo``).

Callbacks: ``states_controls``, ``states_render``, ``states_attention``, ``states_click``.
"""

from __future__ import annotations

import numpy as np
from dash import Input, Output, State, html
from dash.exceptions import PreventUpdate

from ssmlens.dashboards import analysis, catalog, figures, figures_model, figures_zoo
from ssmlens.dashboards.components import (
    control, dropdown, fig_id, figure_card, layer_options, page_header, radio, row, status,
)
from ssmlens.dashboards.context import Context, status_message
from ssmlens.dashboards.pages.tokens import clicked_position
from ssmlens.dashboards.reader import Reader, RunAccessError

NAME = "states"
PATH = "/states"
TITLE = "States"
STATE = "mixer.hook_ssm_state"
PATTERN = "attn.hook_pattern"
REDUCES = [("abs_mean", "mean |α| over channels"), ("mean", "mean α")]


def attention_runs(reader: Reader, run: str, limit: int = 8) -> list[str]:
    """Up to ``limit`` complete runs that cached attention patterns: the run itself, then
    runs on the same task, then the others (checked in that order, so a runs directory
    with hundreds of runs costs no more than ``limit`` of them)."""
    rows, _ = catalog.list_rows(reader)
    task = next((r.task for r in rows if r.run_id == run), "?")
    order = sorted((r for r in rows if r.openable), key=lambda r: (r.run_id != run, r.task != task, r.run_id))
    found = []
    for r in order:
        try:
            if reader.has(r.run_id, PATTERN):
                found.append(r.run_id)
        except RunAccessError:
            continue
        if len(found) >= limit:
            break
    return found


def controls(ctx: Context, run, layer, other):
    reader = ctx.reader
    found = sorted(set(reader.layers_with(run, figures_zoo.state_suffix(reader, run)))
                   | set(reader.layers_with(run, "mixer.hook_delta")))
    others = attention_runs(reader, run)
    return (layer_options(found), layer if layer in found else (found[0] if found else None),
            [{"label": o, "value": o} for o in others], other if other in others else (others[0] if others else None))


def implicit(reader: Reader, run: str, layer: int, example: int, reduce: str) -> np.ndarray:
    """The implicit attention of one layer and example (memoized: ~50 ms to compute)."""
    def compute():
        get = lambda name: reader.layer_hook(run, f"mixer.hook_{name}", layer, example)  # noqa: E731
        return analysis.implicit_attention(get("delta"), reader.a_matrix(run, layer), get("B"), get("C"), reduce)

    return reader.derived(run, ("implicit", layer, example, reduce), compute)


def render(ctx: Context, run, example, token, layer):
    """(state norms, PCA trajectory) of the selection."""
    reader = ctx.reader
    ex = reader.example(run, example)
    roles = ex.role_of()
    sel = token if isinstance(token, int) and 0 <= token < ex.seq_len else None
    state = figures_zoo.state_suffix(reader, run)  # Mamba's / H3's h_t, or Based's kv-state S_t
    what, sym = figures_zoo.state_label(state)
    state_layers = reader.layers_with(run, state)
    if state_layers:
        norms = {f"layer {l}": analysis.state_norm(reader.layer_hook(run, state, l, example)) for l in state_layers}
        norm_fig = figures.mark_position(figures.lines(norms, title=f"{what} norm ‖{sym}‖ over positions",
                                                       xlabel="position", ylabel=f"‖{sym}‖"), sel)
    else:
        norm_fig = figures.message("this run did not cache hidden states (mixer.hook_ssm_state)", "State norm")
    if layer in state_layers:
        h = reader.layer_hook(run, state, layer, example)
        coords, ratio = reader.derived(run, ("pca", state, layer, example), lambda: analysis.pca_2d(h))
        pca_fig = figures_model.trajectory_pca(coords, ratio, ex.tokens, roles, sel,
                                               title=f"{what} trajectory, layer {layer} (PCA)")
    else:
        pca_fig = figures.message("no cached states for this layer", "State trajectory")
    return norm_fig, pca_fig


def render_attention(ctx: Context, run, example, token, layer, other, reduce):
    """(implicit attention, real attention, status): a callback of its own, so that it
    runs beside ``render`` rather than after it."""
    reader = ctx.reader
    ex = reader.example(run, example)
    sel = token if isinstance(token, int) and 0 <= token < ex.seq_len else None
    notes = []
    imp_fig = _implicit_figure(reader, run, example, layer, reduce, sel, notes)
    real_fig = _real_figure(reader, run, other, example, layer, sel)
    return imp_fig, real_fig, status_message("; ".join(notes), "info") if notes else None


def _implicit_figure(reader, run, example, layer, reduce, sel, notes):
    title = f"Mamba implicit attention, layer {layer}"
    if layer is None or not reader.has(run, "mixer.hook_delta"):
        return figures.message("needs cached Δ, B and C (a run with SSM layers)", "Implicit attention")
    try:
        alpha = implicit(reader, run, int(layer), example, reduce or "abs_mean")
    except RunAccessError as e:
        notes.append(str(e))
        return figures.message("implicit attention needs A from the run's checkpoint", title)
    label = dict(REDUCES).get(reduce, reduce)
    fig = figures.heatmap(alpha, title=f"{title} ({label})", xlabel="key position", ylabel="query position",
                          colorscale="Viridis", colorbar="α", height=440, zmin=0 if reduce == "abs_mean" else None)
    fig.update_yaxes(autorange="reversed")
    return figures.mark_position(fig, sel, axis="y")


def _real_figure(reader, run, other, example, layer, sel):
    source = run if reader.has(run, PATTERN) else other
    if not source:
        return figures.message("no run under the runs directory cached attention patterns", "Real attention")
    layers = reader.layers_with(source, PATTERN)
    lay = layer if layer in layers else layers[0]
    n = reader.batch_shape(source)[0]
    ex_i = example if example < n else 0
    p = analysis.head_mean(reader.layer_hook(source, PATTERN, lay, ex_i), "mean")  # [q, k(+1)]
    note = None
    if p.shape[1] == p.shape[0] + 1:
        p, note = p[:, :-1], "token columns only (the fading column is on the Attention page)"
    fig = figures.heatmap(p, title=f"Real attention: {source}, layer {lay}, example {ex_i} (mean over heads)",
                          xlabel="key position", ylabel="query position", colorscale="Viridis", colorbar="weight",
                          height=440, note=note, zmin=0)
    fig.update_yaxes(autorange="reversed")
    return figures.mark_position(fig, sel, axis="y")


def layout(ctx: Context, run: str | None) -> html.Div:
    layers, layer, others, other = [], None, [], None
    if run:
        try:
            layers, layer, others, other = controls(ctx, run, None, None)
        except RunAccessError:
            pass
    return html.Div([
        page_header("States", "How big the hidden state is along the sequence, where it travels (PCA), and the "
                    "attention Mamba computes implicitly, beside a real attention pattern."),
        row(control("layer", dropdown("states-layer", layers, layer), width="160px"),
            control("real attention from", dropdown("states-other", others, other), width="320px"),
            control("implicit attention", radio("states-reduce", REDUCES, "abs_mean"))),
        status("states-status"),
        html.Div(className="ssm-cards", children=[figure_card("states-norm", width="calc(50% - 5px)"),
                                                   figure_card("states-pca", width="calc(50% - 5px)"),
                                                   figure_card("states-implicit", width="calc(50% - 5px)"),
                                                   figure_card("states-real", width="calc(50% - 5px)")]),
    ])


def click(data):
    pos = clicked_position(data)
    if pos is None:
        raise PreventUpdate
    return pos


def register(app, ctx: Context) -> None:
    ctx.callback(app, "states_controls",
                 [Output("states-layer", "options"), Output("states-layer", "value"),
                  Output("states-other", "options"), Output("states-other", "value")],
                 [Input("run-select", "value")], [State("states-layer", "value"), State("states-other", "value")],
                 prevent_initial_call=True)(lambda run, lay, oth: controls(ctx, run, lay, oth))
    selection = [Input("run-select", "value"), Input("example-input", "value"), Input("token-input", "value"),
                 Input("states-layer", "value")]
    ctx.callback(app, "states_render", [Output(fig_id(n), "figure") for n in ("states-norm", "states-pca")],
                 selection)(lambda *a: render(ctx, *a))
    ctx.callback(app, "states_attention",
                 [Output(fig_id(n), "figure") for n in ("states-implicit", "states-real")]
                 + [Output("states-status", "children")],
                 selection + [Input("states-other", "value"), Input("states-reduce", "value")],
                 )(lambda *a: render_attention(ctx, *a))
    ctx.callback(app, "states_click", [Output("token-input", "value", allow_duplicate=True)],
                 [Input(fig_id("states-pca"), "clickData")], prevent_initial_call=True, single=True)(click)
