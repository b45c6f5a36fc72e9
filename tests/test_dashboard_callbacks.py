"""The dashboard's callbacks called directly on a small store written by the test
(``ssmlens.dashboards.sample_store``: tiny random Mamba / Transformer / B'MOJO runs), plus
run-id validation, damaged and incomplete runs, figure builders and the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import xarray as xr

from ssmlens.dashboards import analysis, catalog, controls, figures, results
from ssmlens.dashboards.app import create_app
from ssmlens.dashboards.context import Context
from ssmlens.dashboards.pages import PAGES, compare, interventions, runs, states, tokens
from ssmlens.dashboards.reader import Reader, RunAccessError, clear_caches
from ssmlens.dashboards.sample_store import write_sample_store, write_study_runs
from ssmlens.interp.store import create_run, open_run

MODELS = ("mamba", "transformer", "bmojo")


class FakeApp:
    """Collects what ``register`` hands to ``app.callback``: name -> the timed, guarded
    function Dash would call (same argument order: inputs, then states)."""

    def __init__(self) -> None:
        self.callbacks: dict = {}

    def callback(self, outputs, inputs, state=(), **kwargs):
        def decorate(fn):
            self.callbacks[fn.__name__] = fn
            return fn
        return decorate


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_sample_store(root, models=MODELS, seq_len=64, n_examples=3, d_model=32, patch_positions=6)
    write_study_runs(root)  # demo/<model>: what `ssmlens demo`'s patching study writes
    with pytest.raises(RuntimeError):  # a writer that crashed: the run stays incomplete
        with create_run(root / "broken" / "incomplete", {"model_type": "mamba", "task": "mqar"}) as w:
            w.set_metrics(accuracy=0.5)
            raise RuntimeError("killed")
    corrupt = root / "broken" / "corrupt"
    shutil.copytree(root / "sample" / "transformer", corrupt)
    (corrupt / "zarr.json").write_text("{not json")
    (root / "notarun").mkdir()
    (root / "notarun" / "file.txt").write_text("hello")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(root / "sample" / "mamba", outside / "mamba")
    os.symlink(outside / "mamba", root / "escape")
    return root


@pytest.fixture(scope="module")
def ctx(root) -> Context:
    clear_caches()
    return Context(root)


@pytest.fixture(scope="module")
def cbs(ctx) -> dict:
    app = FakeApp()
    controls.register(app, ctx)
    for page in PAGES:
        page.register(app, ctx)
    return app.callbacks


def is_message(fig, text: str | None = None) -> bool:
    """A message figure (no traces, one annotation), containing ``text`` if given."""
    notes = [a.text for a in fig.layout.annotations]
    return not fig.data and len(notes) == 1 and (text is None or text in notes[0])


def drawn(fig) -> bool:
    return isinstance(fig, go.Figure) and fig.layout.meta == "ssm"


# ---- run ids and run states ---------------------------------------------------------------------


@pytest.mark.parametrize("bad, why", [
    ("", "no run selected"), (None, "no run selected"), ("../etc", "'..'"), ("sample/../../x", "'..'"),
    ("/etc/passwd", "absolute"), ("~/runs", "absolute"), ("s3://bucket/run", "plain path"),
    ("a\\b", "plain path"), ("escape", "outside the runs directory"), ("nothing/here", "no run"),
    ("notarun", "not a run store"),
])
def test_bad_run_ids_are_refused_with_a_message(ctx, bad, why):
    with pytest.raises(RunAccessError, match=why.replace("(", r"\(")):
        ctx.reader.resolve(bad)


def test_run_ids_resolve_inside_the_runs_dir(ctx, root):
    assert ctx.reader.resolve("sample/mamba") == (root / "sample" / "mamba").resolve()
    assert ctx.reader.resolve("sample/./mamba") == (root / "sample" / "mamba").resolve()


def test_catalog_lists_every_run_and_marks_the_unopenable(ctx):
    rows, message = catalog.list_rows(ctx.reader)
    by_id = {r.run_id: r for r in rows}
    assert message is None
    assert {f"sample/{m}" for m in MODELS} <= set(by_id)
    assert by_id["broken/incomplete"].status == "incomplete"
    assert "killed" in by_id["broken/incomplete"].note
    assert by_id["broken/corrupt"].status == "corrupt"
    assert by_id["sample/mamba"].model == "mamba" and by_id["sample/mamba"].task == "mqar"
    options = {o["value"]: o for o in catalog.run_options(rows)}
    assert options["broken/incomplete"]["disabled"] and "[INCOMPLETE]" in options["broken/incomplete"]["label"]
    assert not options["sample/bmojo"]["disabled"]
    assert by_id[catalog.default_run(rows)].openable


@pytest.mark.parametrize("run_id, text", [
    ("broken/incomplete", "incomplete"), ("broken/corrupt", "damaged"), ("../x", "'..'"), ("escape", "outside"),
])
def test_unopenable_runs_show_messages_not_tracebacks(cbs, run_id, text):
    for name, args in [("gating_render", (run_id, 0, 3, 0, "index")), ("tokens_render", (run_id, 0, 3, "delta")),
                       ("states_render", (run_id, 0, 3, 0)), ("attention_render", (run_id, 0, 3, 0, "mean")),
                       ("iv_result", (run_id, "patching/resid_pre", None)), ("runs_detail", (run_id,)),
                       ("run_banner", (run_id, 0, 3))]:
        out = cbs[name](*args)
        outs = out if isinstance(out, (list, tuple)) else [out]
        figs = [o for o in outs if isinstance(o, go.Figure)]
        assert all(is_message(f, text) for f in figs), name
        texts = [str(o) for o in outs if not isinstance(o, go.Figure)]
        assert any(text in t for t in texts) or figs, name
        assert not any("Traceback" in t for t in texts)


def test_damaged_chunk_shows_a_message(ctx, cbs, root):
    shutil.copytree(root / "sample" / "mamba", root / "damaged")
    for chunk in (root / "damaged" / "cache" / "blocks.0.mixer.hook_delta").glob("c.*"):
        chunk.write_bytes(b"\x00\x01")  # truncated chunk
    heat, bc, hist, status = cbs["gating_render"]("damaged", 0, 3, 0, "index")
    assert is_message(heat, "damaged") and "damaged" in str(status)


def test_clicking_an_incomplete_row_does_not_select_it(ctx):
    data, _, _ = runs.table_state(ctx, None)
    value, message = runs.click(ctx, {"row_id": "broken/incomplete"}, data)
    assert value is runs.no_update and "incomplete" in str(message)
    assert runs.click(ctx, {"row_id": "sample/mamba"}, data) == ("sample/mamba", None)


# ---- every page, every model ------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_every_page_renders_for_each_model(ctx, cbs, model):
    run = f"sample/{model}"
    token = controls.default_token(ctx, run, 0, None)
    assert 0 <= token < 64
    for page in PAGES:
        assert page.layout(ctx, run) is not None
    outputs = {
        "tokens": cbs["tokens_render"](run, 0, token, tokens.scalar_options(ctx.reader, run)[0]["value"]),
        "gating": cbs["gating_render"](run, 0, token, 0, "horizon"),
        "states": cbs["states_render"](run, 0, token, 0),
        "states_attention": cbs["states_attention"](run, 0, token, 0, states.controls(ctx, run, 0, None)[3],
                                                    "abs_mean"),
        "attention": cbs["attention_render"](run, 0, token, 0, "mean"),
        "memory": cbs["memory_render"](run, 0, token),
        "iv_result": cbs["iv_result"](run, "patching/resid_pre", None),
        "iv_table": cbs["iv_table"](run, "ablation", "acc", "relative"),
        "compare": cbs["cmp_render"](compare.run_choices(ctx, run)[1], "patching/resid_pre", None),
    }
    for name, out in outputs.items():
        figs = [o for o in out if isinstance(o, go.Figure)]
        assert figs and all(drawn(f) for f in figs), name
        assert not any(is_message(f, "could not draw") for f in figs), name
    has_ssm, has_attn = model != "transformer", model != "mamba"
    assert is_message(outputs["gating"][0]) != has_ssm
    assert is_message(outputs["attention"][0]) != has_attn
    assert is_message(outputs["memory"][0]) != (model == "bmojo")
    if model == "bmojo":  # window / eidetic memory / fading told apart
        titles = [a.text for a in outputs["attention"][0].layout.annotations]
        assert any("window" in t for t in titles) and any("memory" in t for t in titles) and "fading" in titles
    if has_ssm:  # horizon needs A from the checkpoint: drawn, not a message
        assert not is_message(outputs["gating"][2]) and not is_message(outputs["states_attention"][0])


def test_selecting_a_token_changes_the_dependent_figures(cbs):
    run = "sample/bmojo"
    pairs = [("tokens_render", (run, 0, None, "delta")), ("gating_render", (run, 0, None, 0, "index")),
             ("states_render", (run, 0, None, 0)), ("attention_render", (run, 0, None, 0, "mean")),
             ("memory_render", (run, 0, None))]
    for name, args in pairs:
        a = cbs[name](*[5 if x is None else x for x in args])
        b = cbs[name](*[20 if x is None else x for x in args])
        ja = [f.to_json() for f in a if isinstance(f, go.Figure)]
        jb = [f.to_json() for f in b if isinstance(f, go.Figure)]
        assert ja != jb, name


def test_changing_the_run_changes_the_figures(cbs):
    a = cbs["gating_render"]("sample/mamba", 0, 5, 0, "index")[0]
    b = cbs["gating_render"]("sample/bmojo", 0, 5, 0, "index")[0]
    assert a.to_json() != b.to_json()


def test_selectors_follow_the_url_and_the_run(ctx, cbs):
    assert cbs["apply_url"]("?run=sample/bmojo&example=2&token=7") == ("sample/bmojo", 2, 7, controls.no_update)
    run, example, token, options = cbs["apply_url"]("?run=sample/mamba")
    assert run == "sample/mamba" and example is controls.no_update and token is controls.no_update
    # a run that cannot be opened stays selectable-but-disabled, so the selector keeps it
    *_, options = cbs["apply_url"]("?run=../../etc")
    assert {"label": "../../etc [cannot be opened]", "value": "../../etc", "disabled": True} in options
    assert cbs["sync_example"]("sample/mamba", 9) == (2, 0, 63)  # 3 examples: 9 is out of range
    assert cbs["default_token"]("sample/mamba", 0, 500) == ctx.reader.example("sample/mamba", 0).roles["query"][0]
    assert tokens.clicked_position({"points": [{"customdata": 12}]}) == 12
    assert tokens.clicked_position({"points": [{"customdata": -1}]}) is None  # grid padding
    assert states.click({"points": [{"customdata": [4]}]}) == 4
    assert "example 1, position 3" in str(cbs["run_banner"]("sample/mamba", 1, 3))


def test_interventions_and_compare_discover_results(ctx, cbs):
    r_opts, result, s_opts, s_val, t_opts, table = interventions.controls(ctx, "sample/transformer")
    assert result == "patching/resid_pre" and [o["value"] for o in t_opts] == ["ablation"]
    probe_slices = interventions.slices(ctx, "sample/transformer", "probe/accuracy")[0]
    assert "metric=test_acc" in probe_slices[0]["label"]  # no "mean over metrics"; the preferred one first
    for choice in (None, probe_slices[1]["value"]):
        fig, caption = cbs["iv_result"]("sample/transformer", "probe/accuracy", choice)
        assert drawn(fig) and not is_message(fig) and "hook=" in str(caption)
    options, chosen = compare.run_choices(ctx, "sample/mamba")
    assert chosen[0] == "sample/mamba" and {f"sample/{m}" for m in MODELS} <= set(chosen)
    assert "broken/incomplete" not in chosen and "broken/incomplete" not in {o["value"] for o in options}
    chosen = [f"sample/{m}" for m in MODELS]
    grid, peak, components, metrics = cbs["cmp_render"](chosen, "patching/resid_pre", None)
    assert len(grid.data) == 3 and {"k", "v"} <= {str(x).split(" ")[-1] for x in grid.data[0].x}
    assert len(peak.data) == 3 and len(components.data) == 3
    assert "accuracy" in str(metrics)


# ---- figures and analyses ---------------------------------------------------------------------


def test_large_heatmaps_are_downsampled_and_say_so():
    z = np.random.default_rng(0).normal(size=(1200, 900))
    fig = figures.heatmap(z, title="big")
    shown = np.asarray(fig.data[0].z)
    assert shown.size <= figures.MAX_CELLS and "downsampled" in fig.layout.title.text
    assert np.isclose(shown.mean(), z.mean(), atol=1e-3)
    assert "downsampled" not in figures.heatmap(z[:100, :100], title="small").layout.title.text


def test_implicit_attention_matches_its_reference():
    rng = np.random.default_rng(1)
    L, D, N = 45, 5, 3  # L not a multiple of the block
    delta = np.log1p(np.exp(rng.normal(size=(L, D)))) * 4  # large steps exercise the clipping
    A, B, C = -np.exp(rng.normal(size=(D, N))), rng.normal(size=(L, N)), rng.normal(size=(L, N))
    for reduce in ("abs_mean", "mean"):
        fast = analysis.implicit_attention(delta, A, B, C, reduce)
        ref = analysis.implicit_attention_reference(delta, A, B, C, reduce)
        np.testing.assert_allclose(fast, ref, rtol=1e-9, atol=1e-12)
    assert np.all(np.triu(fast, 1) == 0)


def test_bmojo_split_and_occupancy_match_the_model():
    import torch

    from ssmlens.models.bmojo_attention import split_pattern
    from ssmlens.models.bmojo_memory import memory_mask

    rng = np.random.default_rng(2)
    L, window, size = 24, 5, 3
    pattern = rng.random((2, L, L + 1))
    pattern /= pattern.sum(-1, keepdims=True)
    ours, theirs = analysis.split_bmojo(pattern, window), split_pattern(torch.from_numpy(pattern), window)
    for a, b in zip(ours[:3], theirs[:3]):
        np.testing.assert_allclose(a, b.numpy())
    write = (rng.random(L) > 0.6).astype(float)
    expected = memory_mask(torch.from_numpy(write)[None], window, size)[0].sum(-1).numpy()
    np.testing.assert_array_equal(analysis.memory_occupancy(write, window, size), expected)


def test_memory_horizon_and_channel_order():
    delta = np.array([[0.1, 1.0], [0.3, 1.0]])  # mean Δ: 0.2, 1.0
    A = -np.array([[1.0, 4.0], [2.0, 0.5]])
    per_state, per_channel = analysis.memory_horizon(delta, A)
    np.testing.assert_allclose(per_state, [[5.0, 1.25], [0.5, 2.0]])
    np.testing.assert_allclose(per_channel, [5.0, 2.0])
    assert list(analysis.channel_order(delta, "delta")) == [1, 0]
    assert list(analysis.channel_order(delta, "horizon", per_channel)) == [0, 1]


def test_a_comes_from_the_checkpoint(ctx):
    import torch

    from ssmlens.models import load_model

    path = ctx.reader.weights_path("sample/mamba")
    model = load_model(path.parent)
    expected = -torch.exp(model.blocks[1].mixer.A_log.detach().double()).numpy()
    np.testing.assert_allclose(ctx.reader.a_matrix("sample/mamba", 1), expected, rtol=1e-6)


def test_generic_results_of_any_shape():
    da3 = xr.DataArray(np.arange(24.0).reshape(2, 3, 4), dims=("hook", "layer", "pos"),
                       coords={"hook": ["resid", "mixer"], "layer": [0, 1, 2]})
    assert results.display_dims(da3) == ("layer", "pos")
    opts = results.slice_options(da3)
    assert opts[0]["value"] == results.MEAN and len(opts) == 3
    sub, label = results.select(da3, opts[2]["value"])
    assert label == "hook=mixer" and sub.dims == ("layer", "pos")
    fig = results.result_figure(da3, "x/y", opts[1]["value"])
    assert np.asarray(fig.data[0].z).shape == (3, 4)
    line = results.result_figure(xr.DataArray([1.0, 2.0], dims=("ablation",), coords={"ablation": ["a", "b"]}), "z")
    assert list(line.data[0].x) == ["a", "b"]
    assert is_message(results.result_figure(xr.DataArray(3.5), "s"), "3.5")
    strips = results.layer_pos_profile(xr.DataArray(np.ones((2, 3)), dims=("layer", "pos"),
                                                    coords={"pos": [1, 4, 6]}), 8)
    assert set(strips) == {"layer 0", "layer 1"} and np.isnan(strips["layer 0"][0]) and strips["layer 0"][4] == 1
    assert results.peak_by_layer(da3) == {"0": 9.0, "1": 13.0, "2": 17.0}  # mean over hook, max over pos


# ---- the app and the CLI --------------------------------------------------------------------------


def test_app_serves_its_layout_and_timings(root):
    app = create_app(root)
    client = app.server.test_client()
    assert client.get("/").status_code == 200
    layout = client.get("/_dash-layout")
    assert layout.status_code == 200 and "run-select" in layout.get_data(as_text=True)
    payload = {  # the router, through Dash's own request handling
        "output": "..page-content.children..." + "...".join(f"nav-{p.NAME}.className" for p in PAGES) + "..",
        "outputs": [{"id": "page-content", "property": "children"}]
        + [{"id": f"nav-{p.NAME}", "property": "className"} for p in PAGES],
        "inputs": [{"id": "url", "property": "pathname", "value": "/gating"}],
        "state": [{"id": "run-select", "property": "value", "value": "sample/mamba"},
                  {"id": "url", "property": "search", "value": ""}],
        "changedPropIds": ["url.pathname"],
    }
    resp = client.post("/_dash-update-component", json=payload)
    assert resp.status_code == 200
    body = json.loads(resp.get_data(as_text=True))["response"]
    assert "gating-layer" in json.dumps(body["page-content"]) and body["nav-gating"]["className"] == "active"
    timings = json.loads(client.get("/_ssmlens/timings").get_data(as_text=True))
    assert timings["router"]["calls"] == 1 and timings["router"]["max_ms"] > 0


def test_app_without_runs_says_so(tmp_path):
    app = create_app(tmp_path / "missing")
    assert app.layout() is not None
    text = str(runs.layout(app.ssmlens, None))
    assert "cannot list runs" in text or "no runs" in text


def test_cli_serves_on_loopback_and_warns_otherwise(tmp_path, monkeypatch, capsys):
    import waitress

    from ssmlens.dashboards import serve
    from ssmlens.interp.cli import build_parser

    args = build_parser().parse_args(["dash", "--runs", str(tmp_path), "--port", "8123"])
    assert (args.runs, args.port, args.host) == (str(tmp_path), 8123, "127.0.0.1")
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("localhost") and serve.is_loopback("::1")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("192.168.1.5")
    served = {}
    monkeypatch.setattr(waitress, "serve", lambda app, **kw: served.update(kw))
    assert args._run(args) == 0
    out = capsys.readouterr()
    assert "http://127.0.0.1:8123/" in out.out and "WARNING" not in out.err
    assert served["host"] == "127.0.0.1" and served["port"] == 8123
    assert serve.serve(tmp_path, "0.0.0.0", 8124) == 0
    assert "WARNING: serving on 0.0.0.0" in capsys.readouterr().err


def test_reader_memoizes_by_mtime(ctx, root):
    first = ctx.reader.hook("sample/mamba", "blocks.0.mixer.hook_delta", 0)
    assert ctx.reader.hook("sample/mamba", "blocks.0.mixer.hook_delta", 0) is first
    assert not first.flags.writeable  # shared between callbacks: read-only
    meta = root / "sample" / "mamba" / "zarr.json"
    os.utime(meta, ns=(meta.stat().st_atime_ns, meta.stat().st_mtime_ns + 10**9))  # "rewritten"
    assert ctx.reader.hook("sample/mamba", "blocks.0.mixer.hook_delta", 0) is not first
    assert isinstance(Reader(root).root, Path)


# ---- issue 12 items 7, 14, 15, 16 ----------------------------------------------------------------


def test_item14_runs_table_shows_the_accuracy_each_study_knows(ctx, root):
    rows, _ = catalog.list_rows(ctx.reader)
    by_id = {r.run_id: r for r in rows}
    for model in MODELS:
        run = f"demo/{model}"
        assert by_id[run].accuracy == pytest.approx(ctx.reader.metrics(run)["clean_accuracy"])
    data, _, _ = runs.table_state(ctx, None)
    assert all(d["accuracy"] != "" for d in data if d["id"].startswith("demo/"))
    # a store written before the study recorded "accuracy": its clean accuracy is read
    with create_run(root / "older" / "study", {"model_type": "mamba", "task": "ar", "kind": "patching_study"}) as w:
        w.write_batch(open_run(root / "demo" / "mamba").batch())
        w.set_metrics(clean_accuracy=0.75, corrupted_accuracy=0.25)
    rows, _ = catalog.list_rows(ctx.reader)
    assert {r.run_id: r for r in rows}["older/study"].accuracy == pytest.approx(0.75)
    assert "accuracy 0.750" in str(controls.run_banner(ctx, "older/study", 0, 3))


def _find(component, id_):
    """The component with ``id_`` in a layout tree (None if absent)."""
    if getattr(component, "id", None) == id_:
        return component
    children = getattr(component, "children", None)
    for child in children if isinstance(children, (list, tuple)) else [children]:
        if child is not None and not isinstance(child, (str, int, float)):
            found = _find(child, id_)
            if found is not None:
                return found
    return None


def test_item15_interventions_default_to_a_result_the_run_has(ctx, cbs):
    from ssmlens.dashboards.app import route

    mamba, bmojo = "demo/mamba", "demo/bmojo"
    assert "patching/attn.out" in ctx.reader.results(bmojo) and "patching/attn.out" not in ctx.reader.results(mamba)
    # a result the run lacks (another run's, still in the dropdown): the run's own, no error
    fig, caption = cbs["iv_result"](mamba, "patching/attn.out", None)
    assert drawn(fig) and not is_message(fig) and fig.data
    assert "has no result" not in str(caption) and "patching/" in str(caption)
    # /interventions?run=demo/mamba while the selector still held another run: the page is
    # built for the URL's run
    page = route(ctx, "/interventions", bmojo, "?run=demo/mamba")[0]
    assert _find(page, "iv-result").value in ctx.reader.results(mamba)
    r_opts, result, t_opts, table = cbs["iv_controls"](mamba)
    assert result in ctx.reader.results(mamba)
    assert cbs["iv_slices"]("patching/attn.out", mamba) == cbs["iv_slices"](result, mamba)


def test_item15_table_plots_a_metric_never_an_index_column(ctx, cbs):
    run = "demo/mamba"
    df = ctx.reader.table(run, "attribution")
    options, metric = cbs["iv_table_metrics"]("attribution", run)
    values = [o["value"] for o in options]
    assert metric == "restored" and set(values) == {"delta", "restored"}  # not layer, not pos
    fig, view = cbs["iv_table"](run, "attribution", metric, "absolute")
    assert drawn(fig) and fig.layout.title.text.startswith("attribution: restored")
    hooks = list(dict.fromkeys(df["hook"]))
    assert len(fig.data) == len(hooks)  # layer × position heatmaps of the metric, one per hook
    for trace, hook in zip(fig.data, hooks):
        part = df[df["hook"] == hook].pivot_table(index="layer", columns="pos", values="restored", dropna=False)
        assert np.asarray(trace.z, dtype=float) == pytest.approx(part.to_numpy(), nan_ok=True, abs=1e-6)
    # a table without a layer × position grid: one bar per row of a measured column
    from ssmlens.dashboards import tables

    bars = tables.table_figure(pd.DataFrame({"hook": ["a", "b"], "layer": [0, 1], "acc": [0.5, 0.25]}), "t", "acc")
    assert list(bars.data[0].y) == [0.5, 0.25] and list(bars.data[0].x) == ["a · layer 0", "b · layer 1"]
    assert tables.metrics(pd.DataFrame({"layer": [0], "pos": [1], "delta": [0.1], "n": [3]})) == ["delta"]
    # a metric chosen for another table falls back to this table's first
    fig, _ = cbs["iv_table"](run, "attribution", "acc", "absolute")
    assert fig.layout.title.text.startswith("attribution: restored")


def test_item7_interventions_say_how_many_examples_a_ratio_excluded(ctx, cbs, root):
    from ssmlens.interp.store import open_run as open_

    da = open_(root / "demo" / "mamba").result("patching/resid_pre")
    da.attrs.update({"restored_excluded": 3, "restored_min_gap": 0.02, "n_examples": 4})
    with create_run(root / "excl" / "mamba", {"model_type": "mamba", "task": "ar"}) as w:
        w.write_batch(open_(root / "demo" / "mamba").batch())
        w.write_result("patching/resid_pre", da)
    fig, caption = cbs["iv_result"]("excl/mamba", "patching/resid_pre", None)
    assert "3 of 4 examples excluded" in fig.layout.title.text
    assert "3 of 4 examples excluded" in str(caption)


def _run_with_checkpoint(root, run_id: str, checkpoint: str) -> str:
    """A copy of sample/mamba (batch, Δ, B, C, states) that names ``checkpoint``."""
    src = open_run(root / "sample" / "mamba")
    with create_run(root / run_id, src.config, overwrite=True) as w:
        w.write_batch(src.batch())
        w.write_cache({n: src.cache[n].load() for n in src.cache if ".mixer." in n})
        w.set_checkpoint(checkpoint)
    clear_caches()
    return run_id


def test_item16_checkpoints_outside_the_runs_dir_are_refused(ctx, cbs, root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    shutil.copytree(root / "checkpoints" / "sample" / "mamba", outside / "ckpt")
    os.symlink(outside / "ckpt", root / "link-to-ckpt")
    cases = {
        "evil/passwd": "/etc/passwd",
        "evil/relative": os.path.relpath(outside / "ckpt", root),  # ../elsewhere/ckpt
        "evil/absolute": str(outside / "ckpt"),  # a real checkpoint, but outside
        "evil/symlink": "link-to-ckpt",  # inside by name, outside once resolved
    }
    for run_id, ckpt in cases.items():
        _run_with_checkpoint(root, run_id, ckpt)
        with pytest.raises(RunAccessError, match="outside the runs directory"):
            ctx.reader.weights_path(run_id)
        imp, real, status = cbs["states_attention"](run_id, 0, 3, 0, None, "abs_mean")
        assert "outside the runs directory" in str(status) and "passwd" not in str(imp.to_json())
        heat, bc, hist, status = cbs["gating_render"](run_id, 0, 3, 0, "horizon")
        assert "outside the runs directory" in str(status) and "parse" not in str(status).lower()
    # inside: relative to the runs directory, or to its parent (as `ssmlens demo` writes "runs/...")
    inside = _run_with_checkpoint(root, "good/relative", "checkpoints/sample/mamba")
    assert ctx.reader.weights_path(inside) == (root / "checkpoints" / "sample" / "mamba" / "model.safetensors")
    parent_rel = _run_with_checkpoint(root, "good/parent", f"{root.name}/checkpoints/sample/mamba")
    assert ctx.reader.weights_path(parent_rel).parent == (root / "checkpoints" / "sample" / "mamba").resolve()
    assert ctx.reader.a_matrix(inside, 0).shape[0] > 0
