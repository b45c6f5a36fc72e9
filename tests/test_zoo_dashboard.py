"""The dashboard on Based, H3 and Hyena runs (``sample_store`` runs of tiny random
models): each page shows the model's own values, checked against the stored arrays,
and the pages render in headless Chromium without console errors."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from ssmlens.dashboards import analysis, catalog, figures_zoo
from ssmlens.dashboards.context import Context
from ssmlens.dashboards.pages import attention, gating, states
from ssmlens.dashboards.reader import clear_caches
from ssmlens.dashboards.sample_store import write_sample_store
from ssmlens.interp.store import open_run

MODELS = ("based", "h3", "hyena")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo-runs")
    write_sample_store(root, models=MODELS, seq_len=24, n_examples=2, d_model=16, n_pairs=3, patch_positions=4)
    return root


@pytest.fixture(scope="module")
def ctx(root) -> Context:
    clear_caches()
    return Context(root)


def stored(root: Path, run: str, hook: str) -> np.ndarray:
    return open_run(root / run).cache[hook].numpy()


def test_families(ctx):
    assert [catalog.family(ctx.reader, f"sample/{m}") for m in MODELS] == list(MODELS)


def test_based_states_show_the_kv_state_norm(ctx, root):
    norm, pca = states.render(ctx, "sample/based", 1, 3, 1)
    assert "kv-state norm" in norm.layout.title.text and "kv-state trajectory" in pca.layout.title.text
    S = stored(root, "sample/based", "blocks.1.mixer.hook_kv_state")[1]  # [pos, head, feature, d_head]
    line = next(t for t in norm.data if t.name == "layer 1")
    assert np.allclose(line.y, analysis.state_norm(S), rtol=1e-5)
    assert np.all(np.asarray(line.y) > 0)


def test_h3_states_are_shown_like_mambas(ctx, root):
    norm, pca = states.render(ctx, "sample/h3", 0, None, 0)
    assert "State norm ‖h_t‖" in norm.layout.title.text and len(pca.data) > 0
    h = stored(root, "sample/h3", "blocks.0.mixer.hook_ssm_state")[0]
    assert np.allclose(next(t for t in norm.data if t.name == "layer 0").y, analysis.state_norm(h), rtol=1e-5)


def test_based_window_pattern_on_the_attention_page(ctx, root):
    layers, layer, heads, head = attention.controls(ctx, "sample/based", None, None)
    assert [o["value"] for o in layers] == [0, 1] and [h["value"] for h in heads] == ["mean", "0", "1"]
    pat, row, parts, status = attention.render_attention(ctx, "sample/based", 0, 10, 1, "0")
    assert "sliding-window" in pat.layout.title.text and status is None
    z = np.asarray(pat.data[0].z, dtype=np.float64)
    want = stored(root, "sample/based", "blocks.1.mixer.hook_window_pattern")[0, 0]
    assert np.allclose(z, want, atol=1e-6)
    q, k = np.indices(z.shape)
    assert np.all(z[(k > q) | (k <= q - 8)] == 0)  # window 8 (sample_store's Based)
    assert np.allclose(z.sum(1), 1, atol=1e-5)


def test_hyena_filters_on_the_gating_page(ctx, root):
    options, value = gating.layers(ctx, "sample/hyena", None)
    assert [o["value"] for o in options] == [0, 1] and value == 0
    heat, profile, reach, status = gating.render(ctx, "sample/hyena", 0, None, 1, "index")
    assert status is None and "Hyena long filters" in heat.layout.title.text
    h = stored(root, "sample/hyena", "blocks.1.mixer.hook_filter")  # [order, d, lag]
    assert h.shape == (2, 16, 24) and len(heat.data) == 2
    for n in range(2):
        assert np.allclose(np.asarray(heat.data[n].z, dtype=np.float64), h[n], atol=1e-6)
    assert np.allclose(profile.data[0].y, np.abs(h[0]).mean(0), rtol=1e-5)
    assert np.array_equal(np.asarray(reach.data[1].x), figures_zoo.filter_reach(h)[1])


def test_filter_reach():
    h = np.zeros((1, 3, 10))
    h[0, 0, 0] = 1  # all mass at lag 0
    h[0, 1] = 1  # uniform: 90% reached at lag 8
    h[0, 2, 5] = -2  # a single tap at lag 5 (sign ignored)
    assert figures_zoo.filter_reach(h).tolist() == [[0, 8, 5]]


def test_other_models_are_untouched_by_the_zoo_fallbacks(ctx):
    assert figures_zoo.state_suffix(ctx.reader, "sample/h3") == "mixer.hook_ssm_state"
    assert figures_zoo.pattern_suffix(ctx.reader, "sample/hyena") == "attn.hook_pattern"
    *_, status = gating.render(ctx, "sample/based", 0, None, 0, "index")
    assert "no Δ" in str(status.children)


# ---- in headless Chromium ----------------------------------------------------------------------

CHROME = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
READY = """
const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
const busy = document.querySelectorAll('[data-dash-is-loading="true"]').length;
return plots.length > 0 && !busy && plots.every(p => p.layout && p.layout.meta === 'ssm');
"""
TITLES = """return Array.from(document.querySelectorAll('.js-plotly-plot'))
  .map(p => [p.layout.title && p.layout.title.text, (p.data || []).length]);"""


@pytest.mark.browser
@pytest.mark.skipif(not (CHROME and shutil.which("chromedriver")), reason="needs chromium and chromedriver on PATH")
def test_pages_render_in_chromium(root, tmp_path):
    from dash.testing.application_runners import ThreadedRunner
    from dash.testing.composite import DashComposite
    from selenium.webdriver.chrome.options import Options

    from ssmlens.dashboards.app import create_app

    options = Options()
    for arg in ("--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    expect = {("based", "/states"): "kv-state norm", ("based", "/attention"): "sliding-window",
              ("h3", "/states"): "State norm", ("hyena", "/gating"): "Hyena long filters"}
    with ThreadedRunner() as server:
        try:
            duo = DashComposite(server=server, browser="Chrome", headless=True, options=[options], percy_run=False)
        except Exception as e:  # installed but cannot start here
            pytest.skip(f"headless Chromium could not start: {type(e).__name__}: {e}")
        with duo:
            duo.start_server(create_app(root))
            for (model, path), title in expect.items():
                duo.driver.get(f"{duo.server_url}{path}?run=sample/{model}")
                duo.wait_for_element("#page-content > div")
                end = time.time() + 30
                while not duo.driver.execute_script(READY) and time.time() < end:
                    time.sleep(0.05)
                drawn = duo.driver.execute_script(TITLES)
                assert any(t and title in t and n > 0 for t, n in drawn), (model, path, drawn)
                assert "Traceback" not in duo.find_element("#page-content").text
            assert [e for e in duo.get_logs() or [] if e.get("level") == "SEVERE"] == []
