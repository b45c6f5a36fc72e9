"""Tokens: the example's tokens with their roles (key, value, query, answer), and a
colour strip per layer for a per-token scalar: mean Δ, state norm, innovation, writes,
residual norm, or any stored result over (layer, position) such as the fraction of
the clean logit difference restored by patching. Clicking a token (in the grid or a
strip) selects it for every page.

Callbacks: ``tokens_scalars`` (scalar choices of the run), ``tokens_render``,
``tokens_click``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from dash import Input, Output, State, callback_context, html
from dash.exceptions import PreventUpdate

from ssmlens.dashboards import analysis, figures, figures_model
from ssmlens.dashboards.components import control, dropdown, fig_id, figure_card, page_header, row, status
from ssmlens.dashboards.context import Context
from ssmlens.dashboards.reader import Reader, RunAccessError
from ssmlens.dashboards.results import POSITION_DIMS, layer_pos_profile, position_dim

NAME = "tokens"
PATH = "/tokens"
TITLE = "Tokens"

# scalar key -> (label, hook suffix, reduction of one layer's [pos, ...] slice to [pos])
HOOK_SCALARS = {
    "delta": ("mean Δ (over channels)", "mixer.hook_delta", analysis.mean_delta),
    "state_norm": ("state norm ‖h_t‖", "mixer.hook_ssm_state", analysis.state_norm),
    "innovation": ("innovation z_t", "memory.hook_innovation", lambda v: np.asarray(v, dtype=float)),
    "write": ("eidetic write", "memory.hook_write", lambda v: np.asarray(v, dtype=float)),
    "resid": ("‖resid_post‖", "hook_resid_post",
              lambda v: np.linalg.norm(np.asarray(v, dtype=float).reshape(len(v), -1), axis=1)),
}
RESULT_PREFIX = "result:"


def scalar_options(reader: Reader, run: str) -> list[dict]:
    """Per-token scalars this run can show: cached hooks, then (layer, position) results."""
    options = [{"label": label, "value": key} for key, (label, suffix, _) in HOOK_SCALARS.items()
               if reader.has(run, suffix)]
    _, L, _ = reader.batch_shape(run)
    for name in reader.results(run):
        dims, shape, coords = reader.result_info(run, name)  # metadata only: results may be large
        labels = xr.DataArray(np.broadcast_to(np.int8(0), shape), dims=dims, coords={  # no memory
            d: v for d, v in coords.items() if d in POSITION_DIMS and d in dims})
        if "layer" in dims and position_dim(labels, L):
            options.append({"label": f"{name} (over examples)", "value": RESULT_PREFIX + name})
    return options


def strip_values(reader: Reader, run: str, example: int, scalar: str) -> tuple[dict[str, np.ndarray], str]:
    """Layer label -> values over positions, and the colour-bar title."""
    if scalar.startswith(RESULT_PREFIX):
        name = scalar[len(RESULT_PREFIX):]
        _, L, _ = reader.batch_shape(run)
        return layer_pos_profile(reader.result(run, name), L), name.split("/")[-1]
    if scalar not in HOOK_SCALARS:
        raise RunAccessError(f"unknown per-token scalar {scalar!r}")
    label, suffix, reduce = HOOK_SCALARS[scalar]
    return {f"layer {l}": reduce(reader.layer_hook(run, suffix, l, example))
            for l in reader.layers_with(run, suffix)}, label


def render(ctx: Context, run, example, token, scalar):
    """(token grid, strips, status) for the selection."""
    reader = ctx.reader
    ex = reader.example(run, example)
    roles = ex.role_of()
    sel = token if isinstance(token, int) and 0 <= token < ex.seq_len else None
    grid = figures_model.token_grid(ex.tokens, roles, sel, title=f"Example {example}: tokens by role")
    if not scalar:
        return grid, figures.message("this run caches no per-token scalar (Δ, states, innovation) "
                                           "and has no (layer, position) result"), None
    values, label = strip_values(reader, run, int(example), scalar)
    strips = figures_model.scalar_strips(values, ex.tokens, roles, sel, title=f"{label} per layer",
                                         colorbar=label)
    return grid, strips, None


def clicked_position(click) -> int | None:
    """The token position carried in a click's ``customdata`` (None for padding cells)."""
    try:
        point = click["points"][0]
    except (TypeError, KeyError, IndexError):
        return None
    pos = point.get("customdata")
    if isinstance(pos, list):  # some traces carry a row of customdata
        pos = pos[0] if pos else None
    try:
        pos = int(pos)
    except (TypeError, ValueError):
        return None
    return pos if pos >= 0 else None


def click(*clicks):
    """Either figure's click -> the token selector."""
    trig = callback_context.triggered_id
    names = ["tokens-grid", "tokens-strips"]
    data = clicks[names.index(trig["name"])] if isinstance(trig, dict) and trig.get("name") in names else None
    pos = clicked_position(data)
    if pos is None:
        raise PreventUpdate
    return pos


def layout(ctx: Context, run: str | None) -> html.Div:
    options, value = [], None
    if run:
        try:
            options = scalar_options(ctx.reader, run)
            value = options[0]["value"] if options else None
        except RunAccessError:
            pass
    return html.Div([
        page_header("Tokens", "The example's tokens coloured by role, and one strip per layer for a per-token "
                    "value. Click any token to select it on every page."),
        row(control("per-token value", dropdown("tokens-scalar", options, value), width="360px")),
        status("tokens-status"),
        figure_card("tokens-grid"),
        figure_card("tokens-strips"),
    ])


def register(app, ctx: Context) -> None:
    def scalars(run, current):
        options = scalar_options(ctx.reader, run)
        values = [o["value"] for o in options]
        return options, current if current in values else (values[0] if values else None)

    ctx.callback(app, "tokens_scalars", [Output("tokens-scalar", "options"), Output("tokens-scalar", "value")],
                 [Input("run-select", "value")], [State("tokens-scalar", "value")],
                 prevent_initial_call=True)(scalars)
    ctx.callback(app, "tokens_render",
                 [Output(fig_id("tokens-grid"), "figure"), Output(fig_id("tokens-strips"), "figure"),
                  Output("tokens-status", "children")],
                 [Input("run-select", "value"), Input("example-input", "value"), Input("token-input", "value"),
                  Input("tokens-scalar", "value")])(lambda *a: render(ctx, *a))
    ctx.callback(app, "tokens_click", [Output("token-input", "value", allow_duplicate=True)],
                 [Input(fig_id("tokens-grid"), "clickData"), Input(fig_id("tokens-strips"), "clickData")],
                 prevent_initial_call=True, single=True)(click)
