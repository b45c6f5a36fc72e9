"""The dashboard in headless Chromium (``dash_duo``): every page renders with no browser
console errors, selecting a run and clicking a token change the dependent figures,
refused and incomplete runs show messages, and a figure's CSV download works.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them when
it can); without them the module is skipped. One browser and one server serve every
test here (a module-scoped ``dash_duo``, headless, configured in this file), which
keeps the module well under a minute and needs no flags in the global pytest config.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

pytestmark = pytest.mark.browser

CHROME = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
if not (CHROME and shutil.which("chromedriver")):
    pytest.skip("headless Chromium tests need chromium and chromedriver on PATH (Debian: apt-get install "
                "chromium chromium-driver; `make test` does it when run as root)", allow_module_level=True)

from ssmlens.dashboards.app import create_app  # noqa: E402
from ssmlens.dashboards.sample_store import write_sample_store, write_study_runs  # noqa: E402
from ssmlens.interp.store import create_run  # noqa: E402

PAGES = ["/runs", "/tokens", "/gating", "/states", "/attention", "/interventions", "/compare"]
MAIN_FIGURE = {"/tokens": "tokens-strips", "/gating": "gating-delta", "/states": "states-implicit",
               "/attention": "attn-pattern", "/interventions": "iv-result-fig", "/compare": "cmp-grid"}

# JS: the plotly div of a figure card, and whether every figure on the page is drawn by
# the server (``layout.meta == "ssm"``) with no callback still running.
GD = 'const gd = n => { const e = document.getElementById(JSON.stringify({name: n, type: "ssm-fig"}));' \
     ' return e && e.querySelector(".js-plotly-plot"); };'
READY = """
const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
const busy = document.querySelectorAll('[data-dash-is-loading="true"]').length;
return plots.length > 0 && !busy && plots.every(p => p.layout && p.layout.meta === 'ssm');
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    write_sample_store(root, seq_len=64, n_examples=3, d_model=32, patch_positions=6)
    write_study_runs(root)  # demo/bmojo, demo/mamba, demo/transformer as `ssmlens demo` writes them
    try:
        with create_run(root / "broken" / "incomplete", {"model_type": "mamba", "task": "mqar"}):
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    return root


@pytest.fixture(scope="module")
def dash_duo(request, store, tmp_path_factory):
    """``dash_duo`` for this module: one headless Chromium and one app for every test."""
    from dash.testing.application_runners import ThreadedRunner
    from dash.testing.composite import DashComposite
    from selenium.webdriver.chrome.options import Options

    options = Options()
    for arg in ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--window-size=1400,1000",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    with ThreadedRunner() as server:
        try:
            duo = DashComposite(server=server, browser="Chrome", headless=True, options=[options], percy_run=False,
                                download_path=str(tmp_path_factory.mktemp("downloads")))
        except Exception as e:  # a browser that is installed but cannot start here
            pytest.skip(f"headless Chromium could not start: {type(e).__name__}: {e}")
        with duo:
            duo.start_server(create_app(store))
            yield duo


def wait_ready(duo, timeout: float = 20) -> None:
    duo.wait_for_element("#page-content > div")
    end = time.time() + timeout
    while time.time() < end:
        if duo.driver.execute_script(READY):
            return
        time.sleep(0.05)
    raise AssertionError("figures were not drawn in time")


# a checksum of a trace's z (rows of numbers or typed arrays), so figures compare by value
CHECKSUM = """const sum = z => { let s = 0; if (!z) return null;
  if (z.bdata) { for (let i = 0; i < z.bdata.length; i++) s = (s * 31 + z.bdata.charCodeAt(i)) % 1000000007; return s; }
  for (let i = 0; i < z.length; i++) { const r = z[i];
    if (r && r.length !== undefined) { for (let j = 0; j < r.length; j++) s += (r[j] || 0) * (i + 1) * (j + 1); }
    else s += (r || 0) * (i + 1); }
  return s; };"""


def figure(duo, name: str) -> dict:
    """The figure of a card as the browser holds it (data and layout, JSON-safe)."""
    return duo.driver.execute_script(GD + CHECKSUM + f"const g = gd({json.dumps(name)});"
                                     "return g ? {data: g.data.map(t => ({name: t.name, type: t.type, z: sum(t.z)})),"
                                     " layout: {title: g.layout.title && g.layout.title.text,"
                                     " shapes: (g.layout.shapes || []).map(s => ({x0: s.x0, y0: s.y0, type: s.type})),"
                                     " annotations: (g.layout.annotations || []).map(a => a.text)}} : null;")


def console_errors(duo) -> list:
    return [e for e in duo.get_logs() or [] if e.get("level") == "SEVERE"]


def open_page(duo, path: str) -> None:
    duo.driver.get(duo.server_url + path)
    wait_ready(duo) if path != "/runs" else duo.wait_for_element("#runs-table")


def test_every_page_renders_without_console_errors(dash_duo):
    dash_duo.reset_log_timestamp()
    open_page(dash_duo, "/runs")
    assert "sample/mamba" in dash_duo.find_element("#runs-table").text
    assert "incomplete" in dash_duo.find_element("#runs-table").text
    for path in PAGES[1:]:
        dash_duo.find_element(f"#nav-{path.strip('/')}").click()  # client-side navigation
        wait_ready(dash_duo)
        main = figure(dash_duo, MAIN_FIGURE[path])
        assert main and main["data"], f"{path}: no data in {MAIN_FIGURE[path]}"
        assert "Traceback" not in dash_duo.find_element("#page-content").text
    assert console_errors(dash_duo) == []


def test_selecting_a_run_and_a_token_updates_the_figures(dash_duo):
    dash_duo.reset_log_timestamp()
    open_page(dash_duo, "/gating?run=sample/mamba&token=9")
    before = figure(dash_duo, "gating-delta")
    assert [s["x0"] for s in before["layout"]["shapes"]] == [9]
    dash_duo.select_dcc_dropdown("#run-select", value="sample/bmojo (bmojo · mqar)")
    dash_duo.wait_for_contains_text("#run-banner", "bmojo", timeout=30)
    wait_ready(dash_duo)
    assert figure(dash_duo, "gating-delta") != before  # another run, other Δ

    dash_duo.find_element("#nav-tokens").click()
    wait_ready(dash_duo)
    drag = dash_duo.driver.execute_script(GD + 'return gd("tokens-grid").querySelector(".nsewdrag");')
    # the grid is 32 tokens wide and 2 rows high (64 tokens): click row 1, column 4 = position 36
    dash_duo.click_at_coord_fractions(drag, 4.5 / 32, 0.75)
    end = time.time() + 10
    while dash_duo.find_element("#token-input").get_attribute("value") != "36" and time.time() < end:
        time.sleep(0.05)
    assert dash_duo.find_element("#token-input").get_attribute("value") == "36"
    wait_ready(dash_duo)
    assert "position 36" in dash_duo.find_element("#run-banner").text
    for page, name in (("#nav-gating", "gating-delta"), ("#nav-states", "states-norm")):
        dash_duo.find_element(page).click()
        wait_ready(dash_duo)
        assert 36 in [s["x0"] for s in figure(dash_duo, name)["layout"]["shapes"]], name
    assert console_errors(dash_duo) == []


def test_refused_and_incomplete_runs_show_messages(dash_duo):
    dash_duo.reset_log_timestamp()
    for query, text in (("?run=../../etc", "may not appear in a run id"), ("?run=broken/incomplete", "incomplete"),
                        ("?run=/etc", "absolute paths")):
        open_page(dash_duo, "/gating" + query)
        dash_duo.wait_for_contains_text("#gating-status", text, timeout=30)  # slow under CI load
        assert text in figure(dash_duo, "gating-delta")["layout"]["annotations"][0]
        assert "Traceback" not in dash_duo.find_element("body").text
    assert console_errors(dash_duo) == []


def test_figure_data_downloads_as_csv(dash_duo):
    open_page(dash_duo, "/gating?run=sample/mamba")
    button = dash_duo.driver.execute_script(
        'return document.getElementById(JSON.stringify({name: "gating-delta", type: "ssm-csv"}));')
    button.click()
    path = dash_duo.download_path + "/ssmlens-gating-delta.csv"
    end = time.time() + 10
    while time.time() < end:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
            if len(lines) > 1:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    assert lines[0] == "trace,x,y,z"
    assert len(lines) > 64 * 64  # every cell of the Δ heatmap (64 positions × 64 channels)


# ---- issue 12 items 14 and 15 ---------------------------------------------------------------------

CELLS = """const out = {}; for (const tr of document.querySelectorAll('#runs-table tr')) {
  const run = tr.querySelector('td[data-dash-column="run_id"]');
  const acc = tr.querySelector('td[data-dash-column="accuracy"]');
  if (run && acc) out[run.innerText.trim()] = acc.innerText.trim(); } return out;"""


def test_item14_runs_table_shows_each_demo_runs_accuracy(dash_duo):
    open_page(dash_duo, "/runs")
    dash_duo.wait_for_contains_text("#runs-table", "demo/transformer", timeout=20)
    cells = dash_duo.driver.execute_script(CELLS)
    for model in ("bmojo", "mamba", "transformer"):
        assert cells.get(f"demo/{model}", "") != "", cells  # the clean run's answer accuracy
        float(cells[f"demo/{model}"])


def dropdown_value(duo, id_: str) -> str | None:
    """The label a dcc.Dropdown shows (Dash 4's markup; older Dash's as a fallback)."""
    return duo.driver.execute_script(
        f"const e = document.querySelector('#{id_} .dash-dropdown-value-item, #{id_} .Select-value-label');"
        " return e ? e.innerText.trim() : null;")


def test_item15_interventions_opened_for_a_run_show_that_runs_results(dash_duo):
    dash_duo.reset_log_timestamp()
    # the default run (demo/bmojo) lists patching/attn.out first; demo/mamba has no attention
    open_page(dash_duo, "/interventions?run=demo/mamba")
    dash_duo.wait_for_contains_text("#run-banner", "mamba", timeout=30)
    wait_ready(dash_duo)
    result = dropdown_value(dash_duo, "iv-result")
    assert result and "attn" not in result and result.startswith(("patching", "attribution")), result
    assert not dash_duo.driver.find_elements("css selector", "#iv-status .ssm-msg-error")
    fig = figure(dash_duo, "iv-result-fig")
    assert fig["data"] and not any("has no result" in (a or "") for a in fig["layout"]["annotations"])
    # its table: a metric plotted, never the layer column
    assert dropdown_value(dash_duo, "iv-metric") == "restored"
    title = figure(dash_duo, "iv-table-fig")["layout"]["title"]
    assert title.startswith(f"{dropdown_value(dash_duo, 'iv-table')}: restored"), title
    # another run: the result follows it
    dash_duo.select_dcc_dropdown("#run-select", value="demo/bmojo (bmojo · ar)")
    dash_duo.wait_for_contains_text("#run-banner", "bmojo", timeout=30)
    wait_ready(dash_duo)
    end = time.time() + 10
    while dropdown_value(dash_duo, "iv-result") == result and time.time() < end:
        time.sleep(0.1)
    assert dropdown_value(dash_duo, "iv-result") == "patching/attn.out"
    assert not dash_duo.driver.find_elements("css selector", "#iv-status .ssm-msg-error")
    assert console_errors(dash_duo) == []
