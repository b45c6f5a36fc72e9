"""Interventions: whatever the probes stored in the run, drawn from its dims.

Results (labelled arrays): activation patching (layer × position, one result per hook),
attribution patching, interchange interventions, probe accuracy sweeps, ablation
arrays, or anything else: ``ssmlens.dashboards.results`` draws two dims and offers the others
as a slice choice. A result name the run lacks (another run's, still in the menu while the
run changes) draws the run's first result instead of an error. Tables: the ablation study
table as grouped bars (``ssmlens.probes.ablation_figures``); any other table drawn by
``ssmlens.dashboards.tables`` (a measured column, never an index column such as layer or
position); every table as a sortable table.

Callbacks: ``iv_controls``, ``iv_slices``, ``iv_result``, ``iv_table_metrics``, ``iv_table``.
"""

from __future__ import annotations

import pandas as pd
from dash import Input, Output, State, dash_table, html

from ssmlens.dashboards import catalog, figures, results, tables
from ssmlens.dashboards.components import control, dropdown, fig_id, figure_card, page_header, radio, row, status
from ssmlens.dashboards.context import Context, status_message
from ssmlens.dashboards.reader import Reader, RunAccessError
from ssmlens.probes.figures import exclusion_note  # plotly and xarray only: no torch at request time

NAME = "interventions"
PATH = "/interventions"
TITLE = "Interventions"
ORDER = ("patching", "attribution", "interchange", "probe", "ablation")  # menu order of result families
ABLATION_COLUMNS = ("model", "task", "ablation", "metric", "value")
MAX_ROWS = 500


def result_options(reader: Reader, run: str) -> list[dict]:
    names = reader.results(run)

    def rank(n: str):
        family = n.split("/")[0]
        return (ORDER.index(family) if family in ORDER else len(ORDER), n)

    return [{"label": n, "value": n} for n in sorted(names, key=rank)]


def table_options(reader: Reader, run: str) -> list[dict]:
    # ablation_parts/<k> are the study's checkpoints of finished cells; the whole table is "ablation"
    names = [t for t in reader.tables(run) if not t.startswith("ablation_parts/")]
    return [{"label": t, "value": t} for t in names]


def controls(ctx: Context, run: str | None):
    """(result options, result, slice options, slice, table options, table) for a run."""
    r_opts = result_options(ctx.reader, run)
    result = r_opts[0]["value"] if r_opts else None
    s_opts, s_val = slices(ctx, run, result)
    t_opts = table_options(ctx.reader, run)
    return r_opts, result, s_opts, s_val, t_opts, (t_opts[0]["value"] if t_opts else None)


def own_result(ctx: Context, run, name):
    """``name`` when the run has it, else the run's first result (None when it has none)."""
    if name and name in ctx.reader.results(run):
        return name
    options = result_options(ctx.reader, run)
    return options[0]["value"] if options else None


def slices(ctx: Context, run, result):
    result = own_result(ctx, run, result) if run else result
    if not result:
        return [], None
    options = results.slice_options(ctx.reader.result(run, result))
    return options, options[0]["value"] if options else None


def render_result(ctx: Context, run, name, choice):
    name = own_result(ctx, run, name)
    if not name:
        text = "this run holds no results (patching, attribution, probes ...): run a probe into it"
        return figures.message(text, "Results"), status_message(text, "info")
    da = ctx.reader.result(run, name)
    fig = results.result_figure(da, name, choice, height=440, roles=catalog.stable_roles(ctx.reader, run))
    notes = [n for m in _ratio_metrics(da) if (n := exclusion_note(da, m))]
    caption = f"{name}: {results.describe(da)}" + "".join(f" · {n}" for n in notes)
    return fig, html.Span(caption)


def _ratio_metrics(da) -> list[str]:
    """Metrics of ``da`` whose attrs count examples left without a ratio (``<metric>_excluded``)."""
    names = [str(m) for m in da["metric"].values] if "metric" in da.dims and "metric" in da.coords else []
    return [m for m in names if f"{m}_excluded" in da.attrs]


def is_ablation(df: pd.DataFrame) -> bool:
    return all(c in df.columns for c in ABLATION_COLUMNS)


def table_metrics(ctx: Context, run, table):
    if not table:
        return [], None
    df = ctx.reader.table(run, table)
    metrics = [str(m) for m in dict.fromkeys(df["metric"])] if is_ablation(df) else tables.metrics(df)
    return [{"label": m, "value": m} for m in metrics], metrics[0] if metrics else None


def render_table(ctx: Context, run, table, metric, mode):
    if not table:
        text = "this run holds no tables"
        return figures.message(text, "Tables"), status_message(text, "info")
    df = ctx.reader.table(run, table)
    options = [o["value"] for o in table_metrics(ctx, run, table)[0]]
    if metric not in options:  # a metric of the table shown before: this table's first
        metric = options[0] if options else None
    if is_ablation(df) and metric:
        from ssmlens.probes.ablation_figures import ablation_bar_chart

        try:
            fig = ablation_bar_chart(df, metric, relative=mode == "relative")
            fig = figures.style(fig, fig.layout.title.text or table, height=420)
        except ValueError as e:  # e.g. relative without a baseline cell: say so
            fig = figures.message(str(e), table)
    else:
        fig = tables.table_figure(df, table, metric)
    shown = df.head(MAX_ROWS)
    view = html.Div([
        html.P(f"{table}: {len(df)} rows" + (f" (first {MAX_ROWS} shown)" if len(df) > MAX_ROWS else "")),
        dash_table.DataTable(
            data=shown.astype(object).where(shown.notna(), None).to_dict("records"),
            columns=[{"name": str(c), "id": str(c)} for c in shown.columns], sort_action="native", export_format="csv",
            filter_action="native", page_size=15,
            style_cell={"fontFamily": "inherit", "fontSize": 12, "textAlign": "left", "padding": "3px 6px"},
            style_header={"fontWeight": "bold", "backgroundColor": "#f0f0f0"}),
    ])
    return fig, view


def layout(ctx: Context, run: str | None) -> html.Div:
    r_opts, result, s_opts, s_val, t_opts, table = [], None, [], None, [], None
    m_opts, metric = [], None
    if run:
        try:
            r_opts, result, s_opts, s_val, t_opts, table = controls(ctx, run)
            m_opts, metric = table_metrics(ctx, run, table)
        except RunAccessError:
            pass
    return html.Div([
        page_header("Interventions", "Patching, attribution patching, interchange interventions, probes and "
                    "ablations stored in the selected run. Extra dims of a result are chosen in 'slice'."),
        row(control("result", dropdown("iv-result", r_opts, result), width="360px"),
            control("slice", dropdown("iv-slice", s_opts, s_val, placeholder="(no other dims)"), width="360px")),
        status("iv-status"),
        html.Div(id="iv-caption", className="ssm-lead"),
        figure_card("iv-result-fig"),
        row(control("table", dropdown("iv-table", t_opts, table), width="300px"),
            control("metric", dropdown("iv-metric", m_opts, metric), width="200px"),
            control("bars", radio("iv-mode", [("absolute", "values"), ("relative", "change from 'none'")],
                                  "absolute"))),
        figure_card("iv-table-fig"),
        html.Div(id="iv-table-view"),
    ])


def register(app, ctx: Context) -> None:
    def run_controls(run):  # the slice follows from the result (iv_slices)
        r_opts, result, _, _, t_opts, table = controls(ctx, run)
        return r_opts, result, t_opts, table

    ctx.callback(app, "iv_controls",
                 [Output("iv-result", "options"), Output("iv-result", "value"),
                  Output("iv-table", "options"), Output("iv-table", "value")],
                 [Input("run-select", "value")], prevent_initial_call=True)(run_controls)
    ctx.callback(app, "iv_slices", [Output("iv-slice", "options"), Output("iv-slice", "value")],
                 [Input("iv-result", "value")], [State("run-select", "value")],
                 prevent_initial_call=True)(lambda result, run: slices(ctx, run, result))
    ctx.callback(app, "iv_result", [Output(fig_id("iv-result-fig"), "figure"), Output("iv-caption", "children")],
                 [Input("run-select", "value"), Input("iv-result", "value"), Input("iv-slice", "value")],
                 )(lambda *a: render_result(ctx, *a))
    ctx.callback(app, "iv_table_metrics", [Output("iv-metric", "options"), Output("iv-metric", "value")],
                 [Input("iv-table", "value")], [State("run-select", "value")],
                 prevent_initial_call=True)(lambda table, run: table_metrics(ctx, run, table))
    ctx.callback(app, "iv_table", [Output(fig_id("iv-table-fig"), "figure"), Output("iv-table-view", "children")],
                 [Input("run-select", "value"), Input("iv-table", "value"), Input("iv-metric", "value"),
                  Input("iv-mode", "value")])(lambda *a: render_table(ctx, *a))
