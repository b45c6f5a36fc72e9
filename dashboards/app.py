"""The ssmlens dashboard: ``create_app(runs_dir)`` -> a multi-page ``dash.Dash`` app.

Pages (``ssmlens.dashboards.pages``, one module each) share a shell: page links, and the run /
example / token selectors (``ssmlens.dashboards.controls``). Routing is a callback on the URL
rather than ``dash.page_registry``, which is process-global: tests and benchmarks
build several apps over different run directories in one process.

Everything heavy stays on the server: callbacks read zarr slices through the memoized
``ssmlens.dashboards.reader`` and send figures; the browser only holds run ids and figures.
``GET /_ssmlens/timings`` returns the server time of every callback so far (JSON).
"""

from __future__ import annotations

import os
from pathlib import Path

from dash import Dash, Input, Output, State, dcc, html
from flask import jsonify

from ssmlens.dashboards import controls, figures
from ssmlens.dashboards.components import register_downloads
from ssmlens.dashboards.context import Context, status_message
from ssmlens.dashboards.pages import PAGES, page_for

ASSETS = str(Path(__file__).with_name("assets"))


def shell(ctx: Context) -> html.Div:
    """The app's layout, built per page load so the run list is current."""
    selector_row, _ = controls.selectors(ctx)
    nav = [dcc.Link(p.TITLE, href=p.PATH, id=f"nav-{p.NAME}") for p in PAGES]
    return html.Div([
        dcc.Location(id="url", refresh="callback-nav"),
        html.Header(className="ssm-header", children=[
            html.Div(className="ssm-nav", children=[html.Span("ssmlens", className="ssm-brand"), *nav]),
            selector_row,
        ]),
        html.Main(id="page-content", className="ssm-main"),  # filled by the router
    ])


def route(ctx: Context, pathname: str | None, run: str | None, search: str | None = None):
    """The page for ``pathname`` and the nav link classes. The page is built for the run
    that the URL names (``?run=``), else the selected one: on a page load the selector
    still holds the default run while ``apply_url`` sets the URL's, and a page built for
    the default run would offer that run's results to the URL's run."""
    url_run = controls.url_run(search)
    if url_run:
        run = url_run
    page = page_for(pathname or "/")
    classes = ["active" if p is page else "" for p in PAGES]
    if page is None:
        return [status_message(f"no page at {pathname!r}: use the links above"), *classes]
    return [page.layout(ctx, run), *classes]


def create_app(runs_dir: str | os.PathLike, *, title: str = "ssmlens") -> Dash:
    """The dashboard over every run store under ``runs_dir``."""
    ctx = Context(runs_dir)
    app = Dash(
        __name__, title=title, assets_folder=ASSETS, suppress_callback_exceptions=True,
        update_title=None, serve_locally=True,
    )
    app.layout = lambda: shell(ctx)
    ctx.callback(
        app, "router",
        [Output("page-content", "children"), *[Output(f"nav-{p.NAME}", "className") for p in PAGES]],
        [Input("url", "pathname")], [State("run-select", "value"), State("url", "search")],
    )(lambda path, run, search: route(ctx, path, run, search))
    controls.register(app, ctx)
    for page in PAGES:
        page.register(app, ctx)
    register_downloads(app)
    figures.warm_up()

    @app.server.route("/_ssmlens/timings")
    def timings():  # the benchmark's view of server time per callback
        return jsonify(ctx.timings.summary())

    app.ssmlens = ctx  # tests and the benchmark reach the reader and timings here
    return app
