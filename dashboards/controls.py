"""The header's selectors, shared by every page: run, example and token.

State lives in three components of the app shell (``run-select``, ``example-input``,
``token-input``), which page changes never re-render, so a selection made on one page
holds on every other. A link such as ``/gating?run=demo/mamba&example=2&token=130``
sets them on load (``apply_url``).

Callbacks (names as in the timings): ``apply_url``, ``refresh_runs``, ``sync_example``,
``default_token``, ``run_banner``.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from dash import Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from ssmlens.dashboards import catalog
from ssmlens.dashboards.components import control
from ssmlens.dashboards.context import Context, status_message
from ssmlens.dashboards.reader import RunAccessError


def first_query(example) -> int:
    """Where a fresh selection lands: the example's first query (else its last position)."""
    for role in ("query", "last", "answer"):
        if example.roles.get(role):
            return int(example.roles[role][0])
    return example.seq_len - 1


def selectors(ctx: Context) -> tuple[html.Div, str | None]:
    """The selector row, prefilled for the default run (no round trip on first load)."""
    rows, _ = catalog.list_rows(ctx.reader)
    run = catalog.default_run(rows)
    n, L, token = 1, 1, None
    if run:
        try:
            n, L, _ = ctx.reader.batch_shape(run)
            token = first_query(ctx.reader.example(run, 0))
        except RunAccessError:
            pass
    div = html.Div(className="ssm-selectors", children=[
        control("run", dcc.Dropdown(id="run-select", options=catalog.run_options(rows), value=run,
                                    clearable=False, placeholder="no complete run"), width="420px"),
        control("example", dcc.Input(id="example-input", type="number", min=0, max=max(n - 1, 0), step=1,
                                     value=0, debounce=True, className="ssm-token-input")),
        control("token position", dcc.Input(id="token-input", type="number", min=0, max=max(L - 1, 0), step=1,
                                            value=token, debounce=True, className="ssm-token-input")),
        html.Button("refresh runs", id="runs-refresh", n_clicks=0, className="ssm-button",
                    title="list the runs directory again"),
        html.Div(id="run-banner", className="ssm-banner"),
    ])
    return div, run


def _int(values: dict, key: str):
    try:
        return int(values[key][0])
    except (KeyError, IndexError, ValueError):
        return no_update


def url_run(search: str | None) -> str | None:
    """The run a URL's query names (``?run=demo/mamba``), or None."""
    values = parse_qs((search or "").lstrip("?")).get("run")
    return values[0] if values else None


def apply_url(search: str | None):
    """``?run=&example=&token=`` -> the selectors (each left alone when absent)."""
    params = parse_qs((search or "").lstrip("?"))
    if not params:
        raise PreventUpdate
    run = params["run"][0] if params.get("run") else no_update
    return run, _int(params, "example"), _int(params, "token")


def url_options(ctx: Context, search: str | None):
    """The run selector's options when a URL names a run that cannot be opened (refused,
    incomplete, missing): listed, disabled, so that the selector keeps it and every page
    says why. Dash 4's Dropdown clears a value missing from its options (a race with
    ``apply_url`` on a page load). Nothing to change otherwise."""
    run = url_run(search)
    rows, _ = catalog.list_rows(ctx.reader)
    if not run or run in {r.run_id for r in rows}:
        return no_update
    return [*catalog.run_options(rows), {"label": f"{run} [cannot be opened]", "value": run, "disabled": True}]


def refresh_runs(ctx: Context, clicks, current):
    rows, _ = catalog.list_rows(ctx.reader)
    ids = {r.run_id for r in rows if r.openable}
    return catalog.run_options(rows), current if current in ids else catalog.default_run(rows)


def sync_example(ctx: Context, run, example):
    """The example range of the new run; the example kept when it exists there."""
    n, L, _ = ctx.reader.batch_shape(run)
    keep = isinstance(example, int) and 0 <= example < n
    return max(n - 1, 0), no_update if keep else 0, max(L - 1, 0)


def default_token(ctx: Context, run, example, token):
    """Keep the selected token when it exists in the new example, else its first query."""
    ex = ctx.reader.example(run, example if example is not None else 0)
    if isinstance(token, int) and 0 <= token < ex.seq_len:
        raise PreventUpdate
    return first_query(ex)


def run_banner(ctx: Context, run, example, token):
    """One line: the run's model, task and accuracy, and the selected token."""
    if not run:
        return status_message("no run selected: pick one above or on the Runs page", "info")
    reader = ctx.reader
    config = reader.config(run)
    metrics = reader.metrics(run)
    n, L, task = reader.batch_shape(run)
    parts = [catalog.family(reader, run), str(config.get("task") or task)]
    acc = catalog._accuracy(metrics)
    if acc is not None:
        parts.append(f"accuracy {acc:.3f}")
    parts.append(f"{n} examples × {L} tokens")
    text = " · ".join(parts)
    if isinstance(example, int) and isinstance(token, int):
        ex = reader.example(run, example)
        if 0 <= token < ex.seq_len:
            role = ex.role_of()[token] or "other"
            text += f" — example {example}, position {token}: token {int(ex.tokens[token])} ({role})"
    return html.Span(text)


def register(app, ctx: Context) -> None:
    ctx.callback(app, "apply_url",
                 [Output("run-select", "value", allow_duplicate=True),
                  Output("example-input", "value", allow_duplicate=True),
                  Output("token-input", "value", allow_duplicate=True),
                  Output("run-select", "options", allow_duplicate=True)],
                 [Input("url", "search")], prevent_initial_call="initial_duplicate",
                 )(lambda search: (*apply_url(search), url_options(ctx, search)))
    ctx.callback(app, "refresh_runs",
                 [Output("run-select", "options"), Output("run-select", "value", allow_duplicate=True)],
                 [Input("runs-refresh", "n_clicks")], [State("run-select", "value")],
                 prevent_initial_call=True)(lambda c, cur: refresh_runs(ctx, c, cur))
    ctx.callback(app, "sync_example",
                 [Output("example-input", "max"), Output("example-input", "value", allow_duplicate=True),
                  Output("token-input", "max")],
                 [Input("run-select", "value")], [State("example-input", "value")],
                 prevent_initial_call=True)(lambda r, e: sync_example(ctx, r, e))
    ctx.callback(app, "default_token", [Output("token-input", "value", allow_duplicate=True)],
                 [Input("run-select", "value"), Input("example-input", "value")], [State("token-input", "value")],
                 prevent_initial_call=True, single=True)(lambda r, e, t: default_token(ctx, r, e, t))
    ctx.callback(app, "run_banner", [Output("run-banner", "children")],
                 [Input("run-select", "value"), Input("example-input", "value"), Input("token-input", "value")],
                 single=True)(lambda r, e, t: run_banner(ctx, r, e, t))
