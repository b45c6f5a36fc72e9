"""Any stored table (not an ablation study) as a figure of one measured quantity.

A table's columns are of three kinds: *index* columns that say where a row is (layer,
pos, role, batch ...), describing text columns (hook, pos_label), and *measured*
numeric columns (restored, delta, accuracy ...). Only a measured column is ever
plotted; a tidy "long" table (``metric`` and ``value`` columns, as the probe sweep's)
plots the ``value`` of one metric. A table over layer × position (or role) is drawn
as heatmaps, one per hook, on one colour scale (what ``tables/patching`` and
``tables/attribution`` hold); any other as one bar per row, labelled by its
describing columns.
"""

from __future__ import annotations

import pandas as pd

from ssmlens.dashboards import figures
from ssmlens.dashboards.results import PREFERRED_METRICS

MAX_BARS = 200  # past this, a table without a grid is shown as the table only
# columns that say where a row is (its coordinates), never what was measured
INDEX_COLUMNS = {"layer", "layers", "block", "pos", "position", "query_pos", "key_pos", "role", "batch", "example",
                 "head", "expert", "index", "step", "seed", "n", "n_examples"}
GRID_X = ("pos", "position", "role")


def is_long(df: pd.DataFrame) -> bool:
    """A tidy table with one row per (cell, metric): ``metric`` and ``value`` columns."""
    return "metric" in df.columns and "value" in df.columns


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Measured columns: numeric (not bool), not an index column; fractions first."""
    cols = [str(c) for c in df.columns if pd.api.types.is_numeric_dtype(df[c])
            and not pd.api.types.is_bool_dtype(df[c]) and str(c).lower() not in INDEX_COLUMNS]
    rank = {m: i for i, m in enumerate(PREFERRED_METRICS)}
    return sorted(cols, key=lambda c: (rank.get(c, len(rank)), cols.index(c)))


def metrics(df: pd.DataFrame) -> list[str]:
    """What the metric menu offers for this table (the first is the default)."""
    if is_long(df):
        names = [str(m) for m in dict.fromkeys(df["metric"])]
        rank = {m: i for i, m in enumerate(PREFERRED_METRICS)}
        return sorted(names, key=lambda m: (rank.get(m, len(rank)), names.index(m)))
    return metric_columns(df)


def table_figure(df: pd.DataFrame, name: str, metric: str | None, height: int = 420):
    """``metric`` of the table: heatmaps over layer × position per hook, else bars per row."""
    if metric is None:
        return figures.message("this table has no measured (numeric, non-index) column: see the table below", name)
    if is_long(df):
        df = df[df["metric"].astype(str) == metric].drop(columns=["metric"]).rename(columns={"value": metric})
    title = f"{name}: {metric}"
    xdim = next((c for c in GRID_X if c in df.columns), None)
    if "layer" in df.columns and xdim is not None:
        return _grid(df, metric, xdim, title, height)
    if len(df) > MAX_BARS:
        return figures.message(f"{len(df)} rows: too many to draw as bars, see the table below", name)
    measured = set(metric_columns(df))
    describe = [c for c in df.columns if str(c) not in measured]
    labels = [" · ".join(f"{c} {v}" if str(c).lower() in INDEX_COLUMNS else str(v) for c, v in zip(describe, row))
              for row in df[describe].itertuples(index=False)] if describe else [str(i) for i in range(len(df))]
    labels = [f"{label} [{i}]" if labels.count(label) > 1 else label for i, label in enumerate(labels)]
    return figures.bars({metric: dict(zip(labels, df[metric].astype(float)))}, title=title, xlabel="row",
                        ylabel=metric, height=height)


def _grid(df: pd.DataFrame, metric: str, xdim: str, title: str, height: int):
    """One heatmap (layer × ``xdim``) per hook; several rows of a cell are averaged."""
    groups = list(df.groupby("hook", sort=False)) if "hook" in df.columns else [(metric, df)]
    panels = []
    for key, part in groups:
        grid = part.pivot_table(index="layer", columns=xdim, values=metric, aggfunc="mean", dropna=False,
                                sort=xdim != "role")  # roles keep the table's order
        labels = [str(x) for x in grid.columns]
        if "pos_label" in part.columns and xdim != "role":
            named = dict(zip(part[xdim], part["pos_label"].astype(str)))
            labels = [f"{x} {named[x]}" if named.get(x) not in (None, "", "nan") else str(x) for x in grid.columns]
        panels.append((str(key), grid.to_numpy(dtype=float), labels, [f"L{int(l)}" for l in grid.index]))
    return figures.heatmap_panels(panels, title=title, xlabel=xdim, ylabel="layer", height=height)
