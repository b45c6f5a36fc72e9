"""The dashboard's Compare page on an evaluation suite: the suite's runs chosen together,
its mechanism table and report link, every evaluation result comparable across runs,
and the report served from the suite's run store."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import yaml

from ssmlens.dashboards.app import create_app
from ssmlens.dashboards.pages import compare
from ssmlens.probes.evaluation import run_suite

SUITE = {
    "name": "dash", "task": "ar", "task_config": {"n_keys": 8, "n_values": 8, "n_pairs": 3}, "widths": [16],
    "train": {"n_layers": 2, "steps": 10, "batch_size": 8, "eval_every": 10, "eval_size": 16, "warmup_steps": 2},
    "models": [{"family": "transformer", "model_config": {"n_heads": 2}},
               {"family": "mamba", "model_config": {"d_state": 4}}],
    "analysis": {"n_examples": 8, "eval_size": 16},
}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    (root / "s.yaml").write_text(yaml.safe_dump(SUITE))
    result = run_suite(root / "s.yaml", root / "eval-x", progress=False)
    assert not result.failed
    return create_app(root)


def test_suite_runs_are_compared_together(app):
    ctx = app.ssmlens
    assert [o["value"] for o in compare.suite_options(ctx)] == ["eval-x/suite"]
    cell = "eval-x/cells/mamba-w16-lr0.001-s0"
    assert compare.suite_of(ctx, cell) == "eval-x/suite"
    options, chosen = compare.run_choices(ctx, cell)
    assert chosen == [cell, "eval-x/cells/transformer-w16-lr0.001-s0"]
    assert "eval-x/suite" not in {o["value"] for o in options}  # the suite store itself is no model
    assert compare.run_choices(ctx, None, "eval-x/suite")[1][0] == "eval-x/cells/transformer-w16-lr0.001-s0"
    r_opts, result, _, _ = compare.result_choices(ctx, chosen)
    names = {o["value"] for o in r_opts}
    assert {"interchange/resid", "association/resid", "mixing/L0", "accuracy"} <= names
    assert result == "association/resid"
    for name in ("interchange/resid", "association/resid", "mixing/L1", "diagnostics/horizon"):
        grid, peak, components, metrics = compare.render(ctx, chosen, name, None)
        assert isinstance(grid, go.Figure) and len(grid.data) >= 1, name
    panel = str(compare.suite_panel(ctx, "eval-x/suite"))
    assert "/_ssmlens/report/eval-x/suite" in panel and "transformer" in panel and "mamba" in panel
    assert compare.layout(ctx, cell) is not None


def test_report_is_served_from_the_suite_store(app, tmp_path):
    client = app.server.test_client()
    got = client.get("/_ssmlens/report/eval-x/suite")
    assert got.status_code == 200 and got.mimetype == "text/html"
    assert b"Mechanistic evaluation: dash" in got.data and b"Plotly.newPlot" in got.data
    assert client.get("/_ssmlens/report/eval-x/cells/mamba-w16-lr0.001-s0").status_code == 404
    bad = client.get("/_ssmlens/report/../etc")
    assert bad.status_code == 404
