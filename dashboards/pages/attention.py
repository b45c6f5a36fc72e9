"""Attention and memory: real attention patterns (Transformer, B'MOJO) and B'MOJO's
eidetic memory.

- the pattern of a layer (one head or their mean); for B'MOJO split into its window
  columns, its eidetic-memory columns (written tokens older than the window) and the
  query's fading token, the layout of ``ssmlens.models.bmojo_attention``;
- the selected token's row (as a query): weight per key, coloured by part;
- per query, the attention mass by part (B'MOJO) or by role of the key (Transformer);
- innovation scores z_t per layer with the write threshold τ and the written tokens;
- memory occupancy over time: how many written tokens each query's memory holds.

A Based run shows its sliding-window pattern (``mixer.hook_window_pattern``).

Callbacks: ``attention_controls``, ``attention_render``, ``memory_render``.
"""

from __future__ import annotations

import numpy as np
from dash import Input, Output, State, html

from ssmlens.dashboards import analysis, catalog, figures, figures_model, figures_zoo
from ssmlens.dashboards.components import control, dropdown, fig_id, figure_card, layer_options, page_header, row, status
from ssmlens.dashboards.context import Context, status_message
from ssmlens.dashboards.reader import RunAccessError

NAME = "attention"
PATH = "/attention"
TITLE = "Attention & memory"
PATTERN = "attn.hook_pattern"
ATTN_FIGS = ("attn-pattern", "attn-row", "attn-parts")
MEMORY_FIGS = ("memory-innovation", "memory-occupancy")


def controls(ctx: Context, run, layer, head):
    reader = ctx.reader
    pattern = figures_zoo.pattern_suffix(reader, run)
    layers = reader.layers_with(run, pattern)
    layer = layer if layer in layers else (layers[0] if layers else None)
    heads = [{"label": "mean over heads", "value": "mean"}]
    if layer is not None:
        n_heads = reader.hooks(run)[f"blocks.{layer}.{pattern}"][0][1]
        heads += [{"label": f"head {h}", "value": str(h)} for h in range(n_heads)]
    values = [h["value"] for h in heads]
    return layer_options(layers), layer, heads, head if head in values else "mean"


def render_attention(ctx: Context, run, example, token, layer, head):
    reader = ctx.reader
    suffix = figures_zoo.pattern_suffix(reader, run)  # Based: its sliding window
    layers = reader.layers_with(run, suffix)
    if not layers:
        text = ("this run cached no attention patterns (attn.hook_pattern): Mamba, H3 and Hyena have none; "
                "see States for Mamba's implicit attention")
        return figures.message(text), figures.message(text), figures.message(text), status_message(text, "info")
    layer = layer if layer in layers else layers[0]
    ex = reader.example(run, example)
    roles = ex.role_of()
    L = ex.seq_len
    sel = token if isinstance(token, int) and 0 <= token < L else None
    pattern = analysis.head_mean(reader.layer_hook(run, suffix, layer, example), head)  # [q, k]
    head_label = "mean over heads" if head in (None, "mean") else f"head {head}"
    title = f"Attention pattern, layer {layer}"
    notes = []
    parts = None
    if pattern.shape[1] == L + 1:  # B'MOJO: token columns + the fading column
        window = catalog.model_config(reader, run).get("window")
        if isinstance(window, int):
            parts = analysis.split_bmojo(pattern, window)
        else:
            notes.append("B'MOJO window unknown (no model_config in the run or its checkpoint): parts not split")
    if parts is not None:
        pat_fig = figures_model.bmojo_pattern(parts, title=title, head_label=head_label, selected=sel)
        parts_fig = figures_model.parts_mass(parts.window, parts.memory, parts.fading,
                                             title="Attention mass per query: window / eidetic memory / fading",
                                             selected=sel)
    else:
        pat_fig = figures.heatmap(pattern, title=f"{title} · {head_label}", xlabel="key position",
                                  ylabel="query position", colorscale="Viridis", colorbar="weight", zmin=0, height=460,
                                  note=figures_zoo.window_note(reader, run, suffix))
        pat_fig.update_yaxes(autorange="reversed")
        figures.mark_position(pat_fig, sel, axis="y")
        parts_fig = _mass_by_role(pattern[:, :L], roles, sel)
    if sel is None:
        row_fig = figures.message("select a token to see its attention row", "Attention of the selected query")
    else:
        wm = parts.window_mask[sel] if parts is not None else None
        row_fig = figures_model.attention_row(
            pattern[sel], wm, title=f"Query {sel} (token {int(ex.tokens[sel])}, {roles[sel] or 'other'}): weight "
                                     f"per key, layer {layer}", tokens=ex.tokens, roles=roles)
    return pat_fig, row_fig, parts_fig, status_message("; ".join(notes), "info") if notes else None


def _mass_by_role(pattern: np.ndarray, roles: list[str], sel):
    """Per query, attention mass on keys of each role (key, value, query, answer, other)."""
    groups = {}
    for role in ("key", "value", "query", "answer"):
        cols = [p for p, r in enumerate(roles) if r == role]
        if cols:
            groups[f"on {role} tokens"] = pattern[:, cols].sum(axis=1)
    named = [p for p, r in enumerate(roles) if r in ("key", "value", "query", "answer")]
    groups["on other tokens"] = pattern.sum(axis=1) - (pattern[:, named].sum(axis=1) if named else 0)
    fig = figures.lines(groups, title="Attention mass per query, by role of the key", xlabel="query position",
                        ylabel="attention mass")
    for trace in fig.data:
        trace.stackgroup = "one"
    return figures.mark_position(fig, sel)


def render_memory(ctx: Context, run, example, token):
    reader = ctx.reader
    layers = reader.layers_with(run, "memory.hook_innovation")
    if not layers:
        text = "no eidetic memory in this run (memory.hook_innovation not cached): B'MOJO runs have one"
        return figures.message(text, "Innovation"), figures.message(text, "Memory occupancy")
    ex = reader.example(run, example)
    sel = token if isinstance(token, int) and 0 <= token < ex.seq_len else None
    mc = catalog.model_config(reader, run)
    scores = {f"layer {l}": reader.layer_hook(run, "memory.hook_innovation", l, example) for l in layers}
    writes = {}
    for l in layers:
        name = f"blocks.{l}.memory.hook_write"
        if name in reader.hooks(run):
            writes[f"layer {l}"] = reader.hook(run, name, example)
    tau = mc.get("threshold")
    innov = figures_model.innovation_figure(scores, writes, float(tau) if isinstance(tau, (int, float)) else None,
                                            sel, title="Innovation scores and eidetic writes")
    window, size = mc.get("window"), mc.get("memory_size")
    if not writes:
        occ = figures.message("write decisions (memory.hook_write) were not cached", "Memory occupancy")
    elif not (isinstance(window, int) and isinstance(size, int)):
        occ = figures.message("window / memory_size unknown (no model_config in the run or its checkpoint)",
                              "Memory occupancy")
    else:
        series = {}
        for name, w in writes.items():
            series[f"{name} in memory"] = analysis.memory_occupancy(w, window, size)
            series[f"{name} written so far"] = np.cumsum(np.asarray(w) > 0.5)
        dashes = {k: "dot" for k in series if k.endswith("so far")}
        occ = figures.lines(series, title=f"Memory occupancy (window {window}, memory size {size})",
                            xlabel="position", ylabel="tokens", dash=dashes)
        occ.add_hline(y=size, line={"dash": "dash", "color": "gray"}, annotation_text="memory_size")
        figures.mark_position(occ, sel)
    return innov, occ


def layout(ctx: Context, run: str | None) -> html.Div:
    layers, layer, heads, head = [], None, [{"label": "mean over heads", "value": "mean"}], "mean"
    if run:
        try:
            layers, layer, heads, head = controls(ctx, run, None, None)
        except RunAccessError:
            pass
    return html.Div([
        page_header("Attention & memory", "Where each query looks. B'MOJO's keys are told apart: its sliding "
                    "window, its eidetic memory of innovative tokens, and its fading (SSM) token; below, the "
                    "innovation test that decides what is written and how full the memory is."),
        row(control("layer", dropdown("attn-layer", layers, layer), width="160px"),
            control("head", dropdown("attn-head", heads, head), width="200px")),
        status("attention-status"),
        figure_card("attn-pattern"),
        html.Div(className="ssm-cards", children=[figure_card("attn-row", width="calc(50% - 5px)"),
                                                   figure_card("attn-parts", width="calc(50% - 5px)"),
                                                   figure_card("memory-innovation", width="calc(50% - 5px)"),
                                                   figure_card("memory-occupancy", width="calc(50% - 5px)")]),
    ])


def register(app, ctx: Context) -> None:
    ctx.callback(app, "attention_controls",
                 [Output("attn-layer", "options"), Output("attn-layer", "value"),
                  Output("attn-head", "options"), Output("attn-head", "value")],
                 [Input("run-select", "value")], [State("attn-layer", "value"), State("attn-head", "value")],
                 prevent_initial_call=True)(lambda run, lay, head: controls(ctx, run, lay, head))
    selection = [Input("run-select", "value"), Input("example-input", "value"), Input("token-input", "value")]
    ctx.callback(app, "attention_render",
                 [Output(fig_id(n), "figure") for n in ATTN_FIGS] + [Output("attention-status", "children")],
                 selection + [Input("attn-layer", "value"), Input("attn-head", "value")],
                 )(lambda *a: render_attention(ctx, *a))
    ctx.callback(app, "memory_render", [Output(fig_id(n), "figure") for n in MEMORY_FIGS],
                 selection)(lambda *a: render_memory(ctx, *a))
