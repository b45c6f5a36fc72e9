"""Compare: one result (same name, same slice) for several runs side by side, on one
colour scale, with each run's peak effect per layer and per component (every result
of the same family, e.g. each ``patching/<hook>``) and its metrics, so "which
component carries recall in each architecture" is answered on one screen: pick the
patching result of a hook (e.g. ``patching/resid_pre``) and read, per model, the
layer and the position (key, value or query) where patching restores the answer.

An evaluation suite (``ssmlens evaluate``) is a set of runs: choosing one in the "suite"
menu (or a run of it in the run selector) compares its models (by default the best
model of each architecture × width, as in its mechanism table), shows the mechanism
table and links its HTML report (served at ``/_ssmlens/report/<suite run id>`` from the
suite's run store). Every result the evaluation writes (``interchange/<component>``,
``association/<component>``, ``ablation/acc``, ``memory/*``, ``mixing/L<l>``, ``diagnostics/*``)
can be compared across the suite's runs.

Callbacks: ``cmp_controls``, ``cmp_results``, ``cmp_slices``, ``cmp_render``, ``cmp_suite``;
the route ``/_ssmlens/report/<run id>``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import PurePosixPath

import numpy as np
from dash import Input, Output, State, dash_table, dcc, html

from ssmlens.dashboards import catalog, figures, results
from ssmlens.dashboards.components import control, dropdown, fig_id, figure_card, page_header, row, status
from ssmlens.dashboards.context import Context, status_message
from ssmlens.dashboards.reader import RunAccessError

NAME = "compare"
PATH = "/compare"
TITLE = "Compare"
MAX_RUNS = 8
# default result family, most telling first: patching by role answers "where is the
# association carried" directly (layer × queried key / value / query), as do the
# evaluation's association test and interchange interventions by role
PREFERRED = ("patching_roles", "association", "interchange", "patching", "attribution", "probe", "ablation")
SUITE_KIND, CELL_KIND = "evaluation_suite", "evaluation_cell"


def suite_options(ctx: Context) -> list[dict]:
    """The evaluation suites under the runs directory (complete suite stores)."""
    rows, _ = catalog.list_rows(ctx.reader)
    return [{"label": r.run_id, "value": r.run_id} for r in rows if r.openable and r.kind == SUITE_KIND]


def suite_of(ctx: Context, run: str | None) -> str | None:
    """The suite store a run belongs to: itself, or ``<dir>/suite`` for ``<dir>/cells/<key>``."""
    if not run:
        return None
    try:
        kind = ctx.reader.config(run).get("kind")
    except RunAccessError:
        return None
    if kind == SUITE_KIND:
        return run
    parts = PurePosixPath(run).parts
    if kind == CELL_KIND and len(parts) >= 2 and parts[-2] == "cells":
        candidate = str(PurePosixPath(*parts[:-2], "suite")) if len(parts) > 2 else "suite"
        return candidate if candidate in {o["value"] for o in suite_options(ctx)} else None
    return None


def suite_runs(ctx: Context, suite: str) -> list[str]:
    """The finished cell stores of a suite, the best model of each architecture × width
    first (the rows of its mechanism table), then the others."""
    config = ctx.reader.config(suite)
    base = PurePosixPath(suite).parent
    cells = [str(base / "cells" / k) for k in config.get("cells") or []]
    rows, _ = catalog.list_rows(ctx.reader)
    openable = {r.run_id for r in rows if r.openable}
    cells = [c for c in cells if c in openable]
    best = []
    try:
        table = ctx.reader.table(suite, "cells")
        mech = ctx.reader.table(suite, "mechanism")
        done = table[table["status"] == "done"]
        for _, m in mech.iterrows():
            part = done[(done["label"] == m["architecture"]) & (done["width"] == m["width"])]
            if len(part):
                best.append(str(base / "cells" / part.sort_values("acc", ascending=False)["key"].iloc[0]))
    except (RunAccessError, KeyError):
        pass
    return [c for c in best if c in cells] + [c for c in cells if c not in best]


def run_choices(ctx: Context, run: str | None, suite: str | None = None):
    """(options, default selection): complete runs; by default the models of the chosen
    suite (or of the suite the selected run belongs to), else the runs on the selected
    run's task (from the listing's configs, so no run has to be opened to decide)."""
    rows, _ = catalog.list_rows(ctx.reader)
    openable = [r for r in rows if r.openable and r.kind != SUITE_KIND]
    options = [{"label": r.label(), "value": r.run_id} for r in openable]
    suite = suite or suite_of(ctx, run)
    if suite:
        chosen = suite_runs(ctx, suite)
        if run in chosen:
            chosen = [run] + [c for c in chosen if c != run]
        if chosen:
            return options, chosen[:MAX_RUNS]
    if not run:
        return options, [r.run_id for r in openable][:MAX_RUNS]
    task = next((r.task for r in openable if r.run_id == run), None)
    if task in (None, "?"):
        task = ctx.reader.batch_shape(run)[2]
    same = [run] + [r.run_id for r in openable if r.task == task and r.run_id != run]
    return options, same[:MAX_RUNS]


def result_choices(ctx: Context, runs: list[str] | None, current: str | None = None):
    """(result options, result, slice options, slice) for the chosen runs: results named
    in any of them, those in most runs (and patching first) preferred by default."""
    runs = [r for r in (runs or []) if r]
    counts: Counter = Counter()
    for r in runs:
        try:
            counts.update(ctx.reader.results(r))
        except RunAccessError:
            continue
    if not counts:
        return [], None, [], None

    def rank(name):
        family = name.split("/")[0]
        resid = 0 if name.endswith(("/resid", "/resid_pre")) else 1  # the residual stream first in a family
        return (-counts[name], PREFERRED.index(family) if family in PREFERRED else len(PREFERRED), resid, name)

    names = sorted(counts, key=rank)
    options = [{"label": f"{n} (in {counts[n]} of {len(runs)} runs)", "value": n} for n in names]
    result = current if current in counts else names[0]
    return (options, result, *slice_choices(ctx, runs, result))


def slice_choices(ctx: Context, runs: list[str] | None, result: str | None):
    """Slice options of ``result`` as stored in the first chosen run that has it."""
    first = next((r for r in (runs or []) if result and result in _safe_results(ctx, r)), None)
    if first is None:
        return [], None
    s_opts = results.slice_options(ctx.reader.result(first, result))
    return s_opts, (s_opts[0]["value"] if s_opts else None)


def _safe_results(ctx: Context, run: str) -> list[str]:
    try:
        return ctx.reader.results(run)
    except RunAccessError:
        return []


def render(ctx: Context, runs, name, choice):
    runs = [r for r in (runs or []) if r][:MAX_RUNS]
    if not runs:
        text = "choose runs to compare"
        return figures.message(text), figures.message(text), figures.message(text), status_message(text, "info")
    if not name:
        text = "none of these runs holds a result to compare (write patching or probe results into them)"
        return figures.message(text), figures.message(text), figures.message(text), _metrics_table(ctx, runs)
    panels, peaks, missing, lines = [], {}, [], {}
    for r in runs:
        if name not in _safe_results(ctx, r):
            missing.append(r)
            continue
        da = ctx.reader.result(r, name)
        sub, label = results.select(da, choice)
        model = _model(ctx, r)
        if sub.ndim == 2:
            ydim, xdim = results.display_dims(da)
            sub = sub.transpose(ydim, xdim)
            roles = catalog.stable_roles(ctx.reader, r)
            panels.append((f"{r} ({model})", sub.values.astype(float), results.axis_labels(sub, xdim, roles),
                           results.axis_labels(sub, ydim, roles)))
            dims = (ydim, xdim)
        elif sub.ndim == 1:
            lines[f"{r} ({model})"] = sub.values.astype(float)
            dims = (sub.dims[0],)
        peaks[f"{r} ({model})"] = results.peak_by_layer(da, choice)
    note = f"missing in {', '.join(missing)}" if missing else None
    if panels:
        values = np.concatenate([p[1][np.isfinite(p[1])].ravel() for p in panels] + [np.zeros(1)])
        signed = values.min() < 0 < values.max()
        grid = figures.heatmap_panels(panels, title=f"{name} ({label or 'as stored'})", xlabel=dims[1], ylabel=dims[0],
                                      colorscale="RdBu_r" if signed else "Viridis", symmetric=bool(signed),
                                      height=420, note=note)
        for axis in grid.layout:
            if axis.startswith(("xaxis", "yaxis")):
                grid.layout[axis].type = "category"
    elif lines:
        grid = figures.lines(lines, None, title=f"{name} ({label or 'as stored'})", xlabel=dims[0],
                             mode="lines+markers")
    else:
        grid = figures.message(f"{name} has no drawable values in these runs", name)
    peaks = {k: v for k, v in peaks.items() if v}
    peak_fig = (figures.bars(peaks, title=f"Peak |{name.split('/')[-1]}| per layer", xlabel="layer",
                             ylabel="max |value| over the other dims") if peaks else
                figures.message("this result has no layer dim", "Peak per layer"))
    return grid, peak_fig, component_figure(ctx, runs, name, choice), _metrics_table(ctx, runs)


def component_peaks(ctx: Context, runs: list[str], name: str, choice: str | None = None) -> dict[str, dict[str, float]]:
    """Run -> {result of the same family (e.g. every ``patching/<hook>``): peak |value|}
    of the chosen slice (else the preferred metric, other dims averaged)."""
    family = name.split("/")[0] + "/"
    out = {}
    for r in runs:
        peaks = {}
        for other in _safe_results(ctx, r):
            if other.startswith(family):
                sub, _ = results.select(ctx.reader.result(r, other), choice)
                values = np.abs(np.asarray(sub.values, dtype=float))
                finite = values[np.isfinite(values)]
                peaks[other[len(family):]] = float(finite.max()) if finite.size else float("nan")
        if peaks:
            out[f"{r} ({_model(ctx, r)})"] = peaks
    return out


def component_figure(ctx: Context, runs: list[str], name: str, choice: str | None = None):
    """One bar per component (hook) of the result's family and per run: its peak effect."""
    peaks = component_peaks(ctx, runs, name, choice)
    family = name.split("/")[0]
    if not peaks or "/" not in name:
        return figures.message(f"no other {family} results to compare by component", "Peak per component")
    return figures.bars(peaks, title=f"Peak |{family}| per component (every {family}/… result of each run)",
                        xlabel="component", ylabel="max |value|")


def _model(ctx: Context, run: str) -> str:
    try:
        return catalog.family(ctx.reader, run)
    except RunAccessError:
        return "?"


def _metrics_table(ctx: Context, runs: list[str]):
    rows, keys = [], []
    for r in runs:
        try:
            metrics = ctx.reader.metrics(r)
        except RunAccessError as e:
            rows.append({"run": r, "model": "?", "error": str(e)})
            continue
        flat = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()
                if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        keys += [k for k in flat if k not in keys]
        rows.append({"run": r, "model": _model(ctx, r), "task": ctx.reader.batch_shape(r)[2], **flat})
    columns = ["run", "model", "task", *keys] + (["error"] if any("error" in r for r in rows) else [])
    return html.Div([html.H3("Metrics", style={"fontSize": "15px"}), dash_table.DataTable(
        data=rows, columns=[{"name": c, "id": c} for c in columns], sort_action="native", export_format="csv",
        style_cell={"fontFamily": "inherit", "fontSize": 12, "textAlign": "left", "padding": "3px 6px"},
        style_header={"fontWeight": "bold", "backgroundColor": "#f0f0f0"})])


def report_html(ctx: Context, suite: str) -> str:
    """The HTML report stored in a suite's run store (table ``report``)."""
    table = ctx.reader.table(suite, "report")
    html_rows = table[table["format"] == "html"]
    if html_rows.empty:
        raise RunAccessError(f"run {suite!r} holds no HTML report")
    return str(html_rows["content"].iloc[0])


def suite_panel(ctx: Context, suite: str | None):
    """The chosen suite's report link, mechanism table and failed cells."""
    if not suite:
        return None
    from ssmlens.probes.evaluation.summary import mechanism_rows

    mech = ctx.reader.table(suite, "mechanism")
    header, rows = mechanism_rows(mech)
    cells = ctx.reader.table(suite, "cells")
    failed = cells[cells["status"] == "failed"]
    children = [
        html.H3("Mechanism table", style={"fontSize": "15px"}),
        html.A("open the report (HTML, works offline)", href=f"/_ssmlens/report/{suite}", target="_blank",
               id="cmp-report-link"),
        dash_table.DataTable(
            data=[dict(zip(header, r)) for r in rows], columns=[{"name": h, "id": h} for h in header],
            style_cell={"fontFamily": "inherit", "fontSize": 12, "textAlign": "left", "padding": "3px 6px",
                        "whiteSpace": "normal", "height": "auto"},
            style_header={"fontWeight": "bold", "backgroundColor": "#f0f0f0"}),
    ]
    if len(failed):
        children.append(status_message(f"{len(failed)} cell(s) failed: " + "; ".join(
            f"{k}: {str(e).splitlines()[0] if e else ''}" for k, e in zip(failed["key"], failed["error"]))))
    return html.Div(children, className="ssm-suite")


def layout(ctx: Context, run: str | None) -> html.Div:
    options, chosen, r_opts, result, s_opts, s_val = [], [], [], None, [], None
    suites, suite, panel = [], None, None
    try:
        suites = suite_options(ctx)
        suite = suite_of(ctx, run)
        options, chosen = run_choices(ctx, run, suite)
        r_opts, result, s_opts, s_val = result_choices(ctx, chosen)
        panel = suite_panel(ctx, suite)
    except RunAccessError:
        pass
    return html.Div([
        page_header("Compare", "The same result for several runs, side by side on one colour scale. With a "
                    "patching result: per model, the layer and position where restoring the clean activation "
                    "restores the answer, i.e. where the key-value association is carried."),
        row(control("evaluation suite", dcc.Dropdown(id="cmp-suite", options=suites, value=suite,
                                                          placeholder="(none)", clearable=True),
                    width="300px"),
            control("runs", dropdown("cmp-runs", options, chosen, multi=True), width="640px")),
        html.Div(id="cmp-suite-panel", children=panel),
        row(control("result", dropdown("cmp-result", r_opts, result), width="420px"),
            control("slice", dropdown("cmp-slice", s_opts, s_val, placeholder="(no other dims)"), width="320px")),
        status("cmp-status"),
        figure_card("cmp-grid"),
        html.Div(className="ssm-cards", children=[figure_card("cmp-peak", width="calc(50% - 5px)"),
                                                   figure_card("cmp-components", width="calc(50% - 5px)")]),
        html.Div(id="cmp-metrics"),
    ])


def register(app, ctx: Context) -> None:
    ctx.callback(app, "cmp_controls", [Output("cmp-runs", "options"), Output("cmp-runs", "value")],
                 [Input("run-select", "value"), Input("cmp-suite", "value")],
                 prevent_initial_call=True)(lambda run, suite: run_choices(ctx, run, suite))
    ctx.callback(app, "cmp_suite", [Output("cmp-suite-panel", "children")], [Input("cmp-suite", "value")],
                 prevent_initial_call=True, single=True)(lambda suite: suite_panel(ctx, suite))

    server = getattr(app, "server", None)  # the Flask server (absent in callback-only test apps)
    if server is not None:
        @server.route("/_ssmlens/report/<path:suite>")
        def evaluation_report(suite: str):  # the suite's HTML report, from its run store
            from flask import Response

            try:
                return Response(report_html(ctx, suite), mimetype="text/html")
            except RunAccessError as e:
                return Response(str(e), status=404, mimetype="text/plain")
    ctx.callback(app, "cmp_results", [Output("cmp-result", "options"), Output("cmp-result", "value")],
                 [Input("cmp-runs", "value")], [State("cmp-result", "value")],
                 prevent_initial_call=True)(lambda runs, cur: result_choices(ctx, runs, cur)[:2])
    ctx.callback(app, "cmp_slices", [Output("cmp-slice", "options"), Output("cmp-slice", "value")],
                 [Input("cmp-result", "value")], [State("cmp-runs", "value")],
                 prevent_initial_call=True)(lambda result, runs: slice_choices(ctx, runs, result))
    ctx.callback(app, "cmp_render",
                 [Output(fig_id("cmp-grid"), "figure"), Output(fig_id("cmp-peak"), "figure"),
                  Output(fig_id("cmp-components"), "figure"), Output("cmp-metrics", "children")],
                 [Input("cmp-runs", "value"), Input("cmp-result", "value"), Input("cmp-slice", "value")],
                 )(lambda *a: render(ctx, *a))
