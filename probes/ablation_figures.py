"""Plotly figures of ablation studies (the tidy table of ``ssmlens.probes.ablation_study``).

``ablation_bar_chart(table, metric="acc")``: grouped bars, one group per ablation and
one colour per model, one panel per task; ``relative=True`` plots the change from
each model's unablated cell ("none") instead, so the drop an ablation causes reads
directly. Cells marked not applicable (status "n/a": the ablation removes something
the model does not have) are drawn as an empty bar labelled "n/a", never as a value.
Returns a ``plotly.graph_objects.Figure``.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

NEEDED = ("model", "task", "ablation", "metric", "value")


def ablation_bar_chart(table: pd.DataFrame, metric: str = "acc", *, relative: bool = False,
                       tasks=None, models=None, baseline: str = "none", title: str | None = None) -> go.Figure:
    """Bars of ``metric`` per ablation × model, one panel per task.

    ``relative``: value − value of the ``baseline`` ablation of the same model and
    task (the baseline bar is then dropped). ``tasks`` / ``models``: subsets to draw.
    """
    missing = [c for c in NEEDED if c not in table.columns]
    if missing:
        raise ValueError(f"an ablation table needs columns {NEEDED}; missing {missing}")
    df = table[table["metric"] == metric]
    marked = df[df["status"] == "n/a"] if "status" in df.columns else df.iloc[:0]
    na = set(zip(marked["model"], marked["task"], marked["ablation"]))  # cells not applicable
    if df.empty:
        raise ValueError(f"no rows for metric {metric!r}; metrics: {sorted(table['metric'].unique())}")
    task_list = list(dict.fromkeys(df["task"])) if tasks is None else list(tasks)
    model_list = list(dict.fromkeys(df["model"])) if models is None else list(models)
    if relative:
        base = df[df["ablation"] == baseline].set_index(["model", "task"])["value"]
        if base.empty:
            raise ValueError(f"relative=True needs the baseline ablation {baseline!r} in the table")
        df = df[df["ablation"] != baseline].copy()
        df["value"] = df["value"] - [base.get((m, t), float("nan")) for m, t in zip(df["model"], df["task"])]
    ablations = list(dict.fromkeys(df["ablation"]))
    fig = make_subplots(rows=1, cols=len(task_list), subplot_titles=[str(t) for t in task_list],
                        shared_yaxes=True)
    colors = qualitative.Plotly
    for col, task in enumerate(task_list, start=1):
        for i, model in enumerate(model_list):
            part = df[(df["task"] == task) & (df["model"] == model)].set_index("ablation")["value"]
            part = part[~part.index.duplicated(keep="last")]
            not_app = [(model, task, a) in na for a in ablations]
            values = [part.get(a, float("nan")) for a in ablations]
            # an n/a cell: a zero-height bar whose label says so (a NaN bar would carry no label)
            fig.add_trace(go.Bar(
                x=ablations, y=[0.0 if n else v for v, n in zip(values, not_app)],
                text=["n/a" if n else "" for n in not_app], textposition="outside", cliponaxis=False,
                customdata=["n/a (not applicable to this model)" if n else f"{v:.4f}" for v, n in zip(values, not_app)],
                name=str(model), legendgroup=str(model), showlegend=col == 1, marker_color=colors[i % len(colors)],
                hovertemplate=f"{model}<br>%{{x}}<br>{metric}: %{{customdata}}<extra></extra>",
            ), row=1, col=col)
    label = f"Δ {metric} vs {baseline}" if relative else metric
    fig.update_layout(barmode="group", template="plotly_white", legend={"title": "model"},
                      title=title or f"Ablations: {label}")
    fig.update_yaxes(title_text=label, row=1, col=1)
    if relative:
        fig.add_hline(y=0, line={"color": "gray"})
    return fig


__all__ = ["ablation_bar_chart"]
