"""The evaluation report: one self-contained HTML file and a markdown summary.

``build_report(suite, out, cells, mechanism)`` reads the suite's cell stores and returns
``(html, markdown)``. The HTML embeds plotly.js once (inline, no CDN), every figure as a
div that uses it, and nothing fetched from elsewhere, so it opens offline
(``external_references`` lists any src/href/url() that leaves the file; tests assert
there is none outside plotly.js's own unused map-tile defaults). Sections: the
setting, the mechanism table, accuracy vs width, interventions by role, the
association test, the short-conv ablation, B'MOJO's memory, the token-mixing matrices
of one example for every model, the diagnostics, and every cell's status (failed cells
with their error). Each figure carries a one-sentence caption computed from its
numbers (``ssmlens.probes.report_figures``: accuracy and interventions;
``ssmlens.probes.report_internals``: memory, token mixing, diagnostics). The markdown
holds the same tables and captions.
"""

from __future__ import annotations

import html as html_lib
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.io as pio
import plotly.offline

from ssmlens.probes import report_figures as rf
from ssmlens.probes import report_internals as ri
from ssmlens.probes.evaluation.summary import best_cells, mechanism_rows
from ssmlens.probes.report_base import ModelView

CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1400px; padding: 24px 32px;
       color: #222; line-height: 1.45; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 36px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: 13px; margin: 10px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
.caption { color: #333; font-size: 14px; margin: 2px 0 18px 0; max-width: 1200px; }
.fig { margin-top: 8px; } .failed td { background: #fdecea !important; }
pre { background: #f6f6f6; padding: 8px; font-size: 12px; white-space: pre-wrap; }
.note { color: #555; font-size: 13px; }
"""
_ROLE_TAGS = (("bos", "bos"), ("eos", "eos"), ("key", "k"), ("value", "v"), ("query", "query"),
              ("answer", "answer"), ("queried_key", "key*"), ("queried_value", "value*"))


def token_labels(run) -> list[str] | None:
    """A role label per position of the stored batch's example 0 (``key*``/``value*``:
    the queried pair), for the mixing matrices' axes."""
    try:
        batch = run.batch()
    except Exception:  # a run without a batch: unlabelled axes
        return None
    L = batch.tokens.shape[1]
    labels = [""] * L
    for role, tag in _ROLE_TAGS:
        if role in batch.roles:
            for p in batch.roles[role][0].tolist():
                if 0 <= p < L:
                    labels[p] = tag
    return labels


def load_views(out: Path, cells: pd.DataFrame) -> list[ModelView]:
    """The report's models: the best cell of each architecture × width, with its store."""
    from ssmlens.interp.store import StoreError, open_run

    views = []
    for _, r in best_cells(cells).iterrows():
        try:
            run = open_run(Path(out) / "cells" / r["key"])
        except StoreError:
            continue
        views.append(ModelView(r["label"], r["family"], int(r["width"]), dict(run.metrics), run))
    return views


def external_references(text: str) -> list[str]:
    """src=, href= and url() targets that leave the file (http, https, //), outside the
    inline plotly.js bundle (whose map-tile defaults are only used by map traces)."""
    bundle = plotly.offline.get_plotlyjs()
    rest = text.replace(bundle, "")
    found = re.findall(r"""(?:src|href)\s*=\s*["']?\s*((?:https?:)?//[^"'\s>]+)""", rest, flags=re.I)
    found += re.findall(r"""url\(\s*["']?((?:https?:)?//[^"')\s]+)""", rest, flags=re.I)
    found += re.findall(r"""@import\s+["']((?:https?:)?//[^"']+)""", rest, flags=re.I)
    return found


def _table_html(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html_lib.escape(h)}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html_lib.escape(str(c))}</td>" for c in r) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _table_md(header: list[str], rows: list[list[str]]) -> str:
    def esc(c) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _cell_rows(cells: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    header = ["cell", "status", "accuracy", "train steps", "train s", "stop", "analysis s", "error"]
    rows, classes = [], []
    for _, r in cells.iterrows():
        def g(k, fmt="{}"):
            v = r.get(k)
            return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)

        err = str(r.get("error") or "")
        rows.append([r["key"], r["status"], g("acc", "{:.3f}"), g("train_steps", "{:.0f}"), g("train_time_s", "{:.1f}"),
                     g("stop_reason"), g("analysis_s", "{:.1f}"), err.splitlines()[0][:200] if err else ""])
        classes.append("failed" if r["status"] == "failed" else "")
    return header, rows, classes


def _setting(suite) -> str:
    task = ", ".join(f"{k} {v}" for k, v in suite.task_config.items())
    return f"task {suite.task} ({task})" if task else f"task {suite.task}"


def build_report(suite, out: str | Path, cells: pd.DataFrame, mechanism: pd.DataFrame) -> tuple[str, str]:
    """(self-contained HTML, markdown) of the suite (module docstring)."""
    out = Path(out)
    a = suite.analysis
    views = load_views(out, cells)
    labels = token_labels(views[0].run) if views else None
    sections: list[tuple[str, object, str]] = []
    fig, cap = rf.accuracy_vs_width(cells, a.recall_threshold)
    sections.append(("Accuracy vs width", fig, cap))
    fig, cap = rf.interchange_heatmaps(views, a.components, a.threshold)
    sections.append(("Interchange interventions by role", fig, cap))
    fig, cap = rf.association_bars(views, a.threshold)
    sections.append(("Association test", fig, cap))
    fig, cap = rf.association_heatmaps(views, a.components, a.threshold)
    sections.append(("Association test", fig, cap))
    fig, cap = rf.conv_ablation_bars(views)
    sections.append(("Short-convolution ablation", fig, cap))
    for fig, cap in ri.memory_figures(views):
        sections.append(("B'MOJO's eidetic memory", fig, cap))
    fig, cap = ri.mixing_grid(views, labels)
    sections.append(("Token mixing", fig, cap))
    fig, cap = ri.diagnostics_figure(views, a.recall_threshold)
    sections.append(("Stability and memory diagnostics", fig, cap))

    m_header, m_rows = mechanism_rows(mechanism)
    c_header, c_rows, c_classes = _cell_rows(cells)
    n_done = int((cells["status"] == "done").sum()) if not cells.empty else 0
    failed = cells[cells["status"] == "failed"] if not cells.empty else cells
    stamp = time.strftime("%Y-%m-%d %H:%M")
    intro = (f"{len(cells)} cells ({n_done} finished, {len(failed)} failed): "
             f"{', '.join(dict.fromkeys(cells['label']))} on {_setting(suite)}; "
             f"interventions on {a.n_examples} examples, accuracies on {a.eval_size}.")
    lead = ("Rows are architecture × width, each the best cell of its learning-rate sweep. "
            "<b>Association</b>: where patching the clean residual stream at the last block's input undoes a key "
            "corruption (value position: the pair is bound at the value, induction-like; key position: only the "
            "last block's state binds it). <b>Value IIA</b>: whether swapping the value position's residual stream "
            "there swaps the answer. <b>Short conv</b>: accuracy with the conv reduced to its current tap "
            "(dependence = drop / (acc − chance)). <b>Eidetic memory</b>: B'MOJO's share of recall above chance "
            "lost without memory.")

    body = [f"<h1>Mechanistic evaluation: {html_lib.escape(suite.name)}</h1>",
            f"<p class='sub'>{html_lib.escape(intro)} Written {stamp} by <code>ssmlens evaluate</code>.</p>",
            "<h2>Mechanism table</h2>", f"<p class='note'>{lead}</p>", _table_html(m_header, m_rows)]
    md = [f"# Mechanistic evaluation: {suite.name}", "", f"{intro} Written {stamp} by `ssmlens evaluate`; the "
          "figures are in report.html.", "", "## Mechanism table", "", re.sub("<[^>]+>", "", lead), "",
          _table_md(m_header, m_rows), ""]
    first_js = True
    for i, (title, fig, cap) in enumerate(sections):
        if title != (sections[i - 1][0] if i else None):
            body.append(f"<h2>{html_lib.escape(title)}</h2>")
            md += [f"## {title}", ""]
        if fig is not None:
            body.append("<div class='fig'>" + pio.to_html(
                fig, full_html=False, include_plotlyjs=False, div_id=f"fig{i}",
                config={"displaylogo": False, "responsive": True}) + "</div>")
            first_js = False
        body.append(f"<p class='caption'>{html_lib.escape(cap)}</p>")
        md += [cap, ""]
    body += ["<h2>Cells</h2>", _table_html(c_header, c_rows, c_classes)]
    md += ["## Cells", "", _table_md(c_header, c_rows), ""]
    if len(failed):
        body.append("<h2>Failed cells</h2>")
        md += ["## Failed cells", ""]
        for _, r in failed.iterrows():
            body.append(f"<p><b>{html_lib.escape(r['key'])}</b></p><pre>{html_lib.escape(str(r['error']))}</pre>")
            md += [f"- **{r['key']}**: `{str(r['error']).splitlines()[0] if r['error'] else ''}`"]
        md.append("")
    script = "" if first_js else f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
    html = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>ssmlens evaluation: {html_lib.escape(suite.name)}</title><style>{CSS}</style>{script}</head>"
            f"<body>{''.join(body)}</body></html>")
    return html, "\n".join(md)
