"""Runs: every run store under the runs directory, with model, task, accuracy, date and
state. Incomplete, corrupt and refused runs are listed (marked) but never opened:
clicking one says why instead of selecting it. Below the table, what the selected run
holds (config, metrics, cached hooks, results, tables).

Callbacks: ``runs_table``, ``runs_click``, ``runs_detail``.
"""

from __future__ import annotations

import json

from dash import Input, Output, State, dash_table, html, no_update

from ssmlens.dashboards import catalog
from ssmlens.dashboards.components import page_header, status
from ssmlens.dashboards.context import Context, status_message
from ssmlens.dashboards.reader import RunAccessError

NAME = "runs"
PATH = "/runs"
TITLE = "Runs"

COLUMNS = [("run_id", "run"), ("status", "state"), ("model", "model"), ("task", "task"), ("kind", "kind"),
           ("accuracy", "accuracy"), ("created", "created (UTC)"), ("note", "note")]


def table_state(ctx: Context, run: str | None):
    """(rows as dicts, conditional styles, listing message) for the runs table."""
    rows, message = catalog.list_rows(ctx.reader)
    styles = [
        {"if": {"filter_query": '{status} = "incomplete"'}, "backgroundColor": "#fff4e5", "color": "#8a5300"},
        {"if": {"filter_query": '{status} = "corrupt"'}, "backgroundColor": "#fdecea", "color": "#8a1c1c"},
        {"if": {"filter_query": '{status} = "refused"'}, "backgroundColor": "#fdecea", "color": "#8a1c1c"},
    ]
    if run and '"' not in run:  # (a quote would end the filter string early)
        styles.append({"if": {"filter_query": f'{{run_id}} = "{run}"'}, "fontWeight": "bold",
                       "backgroundColor": "#e8f0f8"})
    return [r.as_dict() for r in rows], styles, status_message(message, "info")


def detail(ctx: Context, run: str | None):
    """What the selected run holds."""
    if not run:
        return status_message("select a run to see what it holds", "info")
    reader = ctx.reader
    hooks = reader.hooks(run)
    results, tables = reader.results(run), reader.tables(run)
    n, L, task = reader.batch_shape(run)
    kinds = sorted({h.split(".", 2)[-1] if h.startswith("blocks.") else h for h in hooks})
    return html.Div([
        html.H3(f"{run}: {catalog.family(reader, run)} on {task}", style={"fontSize": "16px"}),
        html.P(f"batch: {n} examples × {L} tokens · {len(hooks)} cached hooks · {len(results)} results · "
               f"{len(tables)} tables"),
        html.Details([html.Summary("cached hook kinds"), html.P(", ".join(kinds) or "none")], open=False),
        html.Details([html.Summary("results"), html.P(", ".join(results) or "none")], open=True),
        html.Details([html.Summary("tables"), html.P(", ".join(tables) or "none")], open=False),
        html.Details([html.Summary("metrics"),
                      html.Pre(json.dumps(reader.metrics(run), indent=1, default=str), className="ssm-pre")]),
        html.Details([html.Summary("config"),
                      html.Pre(json.dumps(reader.config(run), indent=1, default=str), className="ssm-pre")]),
    ])


def layout(ctx: Context, run: str | None) -> html.Div:
    data, styles, message = table_state(ctx, run)
    try:
        body = detail(ctx, run)
    except RunAccessError as e:
        body = status_message(str(e))
    return html.Div([
        page_header("Runs", f"Every run store under {ctx.reader.runs_dir}. Click a run to select it for every "
                    "page; incomplete or damaged runs are listed but not opened."),
        status("runs-status"),
        html.Div(id="runs-listing", children=message),
        dash_table.DataTable(
            id="runs-table", data=data, columns=[{"name": label, "id": key} for key, label in COLUMNS],
            sort_action="native", export_format="csv", filter_action="native", page_size=25,
            style_data_conditional=styles,
            style_cell={"fontFamily": "inherit", "fontSize": 13, "textAlign": "left", "padding": "4px 8px",
                        "maxWidth": 380, "overflow": "hidden", "textOverflow": "ellipsis"},
            style_header={"fontWeight": "bold", "backgroundColor": "#f0f0f0"},
            tooltip_duration=None,
        ),
        html.Div(id="runs-detail", children=body, style={"marginTop": "12px"}),
    ])


def click(ctx: Context, cell, data):
    """A click on a row selects its run, unless the run cannot be opened (then: why)."""
    if not cell or not data:
        return no_update, None
    run_id = cell.get("row_id")
    row = next((r for r in data if r.get("id") == run_id), None)
    if row is None:
        return no_update, None
    if row.get("status") != "complete":
        return no_update, status_message(f"{run_id} is {row.get('status')} and is not opened: {row.get('note')}")
    return run_id, None


def register(app, ctx: Context) -> None:
    ctx.callback(app, "runs_table",
                 [Output("runs-table", "data"), Output("runs-table", "style_data_conditional"),
                  Output("runs-listing", "children")],
                 [Input("runs-refresh", "n_clicks"), Input("run-select", "value")],
                 prevent_initial_call=True)(lambda _, run: table_state(ctx, run))
    ctx.callback(app, "runs_click",
                 [Output("run-select", "value", allow_duplicate=True), Output("runs-status", "children")],
                 [Input("runs-table", "active_cell")], [State("runs-table", "data")],
                 prevent_initial_call=True)(lambda cell, data: click(ctx, cell, data))
    ctx.callback(app, "runs_detail", [Output("runs-detail", "children")], [Input("run-select", "value")],
                 prevent_initial_call=True, single=True)(lambda run: detail(ctx, run))
