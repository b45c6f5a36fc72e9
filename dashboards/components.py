"""Layout pieces shared by the pages: figure cards (graph + PNG/CSV downloads), labelled
controls, page headers.

Every figure sits in a card with plotly's own "download as PNG" modebar button and a
"download data (CSV)" button. The CSV is built in the browser from the figure itself
(``assets/ssmlens.js``), so it costs no server round trip and always matches what is
drawn (the downsampled values when the figure says it was downsampled).
"""

from __future__ import annotations

from typing import Any

from dash import ClientsideFunction, Input, Output, State, dcc, html, MATCH

FIG = "ssm-fig"
CSV = "ssm-csv"
DL = "ssm-dl"


def fig_id(name: str) -> dict[str, str]:
    """The id of the graph ``name`` (pattern-matching ids, so one CSV callback serves all)."""
    return {"type": FIG, "name": name}


def graph_config(name: str) -> dict[str, Any]:
    return {
        "displaylogo": False,
        "toImageButtonOptions": {"format": "png", "filename": f"ssmlens-{name}", "scale": 2},
        "modeBarButtonsToRemove": ["lasso2d", "select2d"],
    }


def figure_card(name: str, width: str = "100%", height: int | None = None) -> html.Div:
    """A graph with its downloads. ``width``: CSS width of the card (cards wrap)."""
    style = {"height": f"{height}px"} if height else None
    return html.Div(className="ssm-card", style={"width": width}, children=[
        dcc.Graph(id=fig_id(name), config=graph_config(name), style=style, className="ssm-graph"),
        html.Div(className="ssm-card-foot", children=[
            html.Button("download data (CSV)", id={"type": CSV, "name": name}, n_clicks=0,
                        className="ssm-link-button", title="the values drawn in this figure, as CSV"),
            dcc.Download(id={"type": DL, "name": name}),
        ]),
    ])


def register_downloads(app) -> None:
    """One clientside callback for every figure's CSV button (MATCH on the name)."""
    app.clientside_callback(
        ClientsideFunction(namespace="ssmlens", function_name="figureCsv"),
        Output({"type": DL, "name": MATCH}, "data"),
        Input({"type": CSV, "name": MATCH}, "n_clicks"),
        State({"type": FIG, "name": MATCH}, "figure"),
        State({"type": FIG, "name": MATCH}, "id"),
        prevent_initial_call=True,
    )


def control(label: str, component, width: str | None = None) -> html.Div:
    return html.Div(className="ssm-control", style={"width": width} if width else None,
                    children=[html.Label(label, className="ssm-control-label"), component])


def dropdown(id_: str, options=None, value=None, **kw) -> dcc.Dropdown:
    return dcc.Dropdown(id=id_, options=options or [], value=value, clearable=False, **kw)


def radio(id_: str, options: list[tuple[str, str]], value: str) -> dcc.RadioItems:
    return dcc.RadioItems(id=id_, options=[{"label": l, "value": v} for v, l in options], value=value,
                          inline=True, className="ssm-radio")


def page_header(title: str, text: str) -> html.Div:
    return html.Div(className="ssm-page-head", children=[html.H2(title), html.P(text, className="ssm-lead")])


def status(id_: str) -> html.Div:
    """The page's message slot (errors, notes about what the run lacks)."""
    return html.Div(id=id_, className="ssm-status")


def row(*children) -> html.Div:
    return html.Div(className="ssm-row", children=list(children))


def layer_options(layers: list[int]) -> list[dict[str, Any]]:
    return [{"label": f"layer {l}", "value": l} for l in layers]
