"""The dashboard's pages, in menu order. Each module defines ``NAME``, ``PATH``,
``TITLE``, ``layout(ctx, run_id)`` (the page for the selected run) and
``register(app, ctx)`` (its callbacks); its figure logic is a plain function of the
reader and the selections, which the tests call directly."""

from __future__ import annotations

from ssmlens.dashboards.pages import attention, compare, gating, interventions, runs, states, tokens

PAGES = [runs, tokens, gating, states, attention, interventions, compare]


def page_for(pathname: str):
    """The page module serving ``pathname`` ("/" is the Runs page), or None."""
    path = "/" + (pathname or "/").strip("/").split("/")[0]
    if path == "/":
        return runs
    return next((p for p in PAGES if p.PATH == path), None)
