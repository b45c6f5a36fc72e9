"""What the evaluation report's figures share: ``ModelView``, caption formatting, style.

``ModelView`` is one model of the report (the best cell of an architecture × width:
its summary row and its run store); ``pct``, ``num`` and ``join`` write the numbers
and lists of the captions; ``_style``, ``_colors`` and ``_grid`` give every figure the
same layout, palette and panel grid. The figures themselves are in
``ssmlens.probes.report_figures`` and ``ssmlens.probes.report_internals``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

ROLE_SHORT = {"queried_key": "key", "queried_value": "value", "query": "query", "last": "last"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
FONT = dict(family="Helvetica, Arial, sans-serif", size=12)


@dataclass
class ModelView:
    """One model of the report: the best cell of an architecture × width."""

    label: str
    family: str
    width: int
    row: dict  # the cell's summary numbers
    run: Any  # its ssmlens.interp.store.Run

    @property
    def name(self) -> str:
        return f"{self.label} w{self.width}"

    @property
    def acc(self) -> float:
        return float(self.row.get("acc", float("nan")))

    def result(self, name: str):
        return self.run.result(name) if name in self.results else None

    @property
    def results(self) -> list[str]:
        if not hasattr(self, "_results"):
            self._results = self.run.results()
        return self._results


def pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.0f}%"


def num(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"


def join(items: list[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _style(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=15)), template="plotly_white", font=FONT,
                      height=height, margin=dict(l=60, r=30, t=70, b=50))
    return fig


def _colors(labels: list[str]) -> dict[str, str]:
    return {l: PALETTE[i % len(PALETTE)] for i, l in enumerate(dict.fromkeys(labels))}


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols

