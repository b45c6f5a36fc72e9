"""Dashboard timings against the issue-7 targets: every page's first render in headless
Chromium under 2 s, every callback under 300 ms of server time.

Store: the demo's runs (``runs/`` when ``ssmlens demo`` wrote complete runs there) or,
by default when there are none, a demo-like store written by
``ssmlens.dashboards.sample_store`` (Mamba, Transformer, B'MOJO; 2 layers, 8 examples of 256
tokens) in a temporary directory.

- First render: a fresh navigation to each page × run (``/gating?run=...``) with the
  server's read caches emptied first, timed in the browser from navigation start to
  "every figure drawn by the server and no callback pending" (``performance.now()``).
  The very first load (JavaScript bundles not yet in the browser cache) is reported
  on its own row.
- Callbacks: server time of every callback the browser triggered (page loads, then a
  token click, a layer change, sorting and a run change), measured around Flask's
  handling of ``/_dash-update-component`` (so Dash's JSON encoding is included), and
  each callback's function time with cold caches (``Context.timings``).

``--screenshots DIR`` also saves one PNG per page (docs/screenshots/). The table is
printed and written as the ``## Dashboard`` section of benchmarks/RESULTS.md.
Run: ``python benchmarks/dashboard.py [--runs DIR] [--screenshots docs/screenshots]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Dashboard"
PAGES = ["/runs", "/tokens", "/gating", "/states", "/attention", "/interventions", "/compare"]
FIRST_RENDER_MS, CALLBACK_MS = 2000, 300

# Resolves with performance.now() once every figure is drawn by the server (layout.meta
# "ssm"), the runs table is there on /runs, and no callback is pending.
WAIT_READY = """
const done = arguments[arguments.length - 1];
const t0 = performance.now();
(function poll() {
  const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
  const busy = document.querySelectorAll('[data-dash-is-loading="true"]').length;
  const table = document.querySelector('#runs-table .dash-spreadsheet');
  const runsPage = location.pathname === '/runs' || location.pathname === '/';
  const drawn = plots.length > 0 && plots.every(p => p.layout && p.layout.meta === 'ssm');
  const ready = !busy && (runsPage ? !!table : drawn);
  if (ready) return done(performance.now());
  if (performance.now() - t0 > 20000) return done(-1);
  setTimeout(poll, 5);
})();
"""


def demo_store_ready(path: Path) -> bool:
    from ssmlens.interp.store import list_runs

    try:
        return sum(r.complete for r in list_runs(path)) >= 1
    except Exception:
        return False


def build_store(root: Path) -> Path:
    from ssmlens.dashboards.sample_store import write_sample_store

    write_sample_store(root, prefix="demo", seq_len=256, n_examples=8, d_model=64, n_pairs=8, patch_positions=16)
    return root


class RequestTimer:
    """Times Flask's handling of every callback request, by callback name."""

    def __init__(self, app) -> None:
        from flask import g, request

        self.ms: dict[str, list[float]] = defaultdict(list)
        names = {key: getattr(spec.get("callback"), "__name__", key) for key, spec in app.callback_map.items()}

        @app.server.before_request
        def start():
            g.ssm_start = time.perf_counter()

        @app.server.after_request
        def stop(response):
            if request.path.endswith("/_dash-update-component") and hasattr(g, "ssm_start"):
                body = request.get_json(silent=True) or {}
                name = names.get(body.get("output"), "(clientside)")
                self.ms[name].append(1000 * (time.perf_counter() - g.ssm_start))
            return response


def serve(app) -> tuple[str, callable]:
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server.shutdown


def browser(width: int = 1400, height: int = 1000):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    driver = webdriver.Chrome(options=options)
    driver.set_script_timeout(30)
    return driver


def load(driver, url: str) -> float:
    """Navigate and return ms from navigation start to the page being drawn."""
    driver.get(url)
    ms = driver.execute_async_script(WAIT_READY)
    if ms < 0:
        raise RuntimeError(f"{url} did not finish rendering in 20 s")
    return ms


def interact(driver, base: str, run: str) -> None:
    """Trigger the callbacks that page loads do not: clicks, a layer, a sort, a run change."""
    from selenium.webdriver.common.action_chains import ActionChains

    def settle():
        driver.execute_async_script(WAIT_READY)

    load(driver, f"{base}/tokens?run={run}")
    drag = driver.execute_script('return document.getElementById(JSON.stringify({name: "tokens-grid", '
                                 'type: "ssm-fig"})).querySelector(".nsewdrag");')
    ActionChains(driver).move_to_element_with_offset(drag, drag.size["width"] * 5.5 / 32,
                                                     drag.size["height"] * 0.1).click().perform()
    time.sleep(0.5)
    settle()
    load(driver, f"{base}/gating?run={run}")
    for label in driver.find_elements("css selector", "#gating-sort label"):
        label.click()
        time.sleep(0.3)
        settle()
    load(driver, f"{base}/states?run={run}")
    driver.find_elements("css selector", "#states-reduce label")[1].click()
    time.sleep(0.3)
    settle()
    token = driver.find_element("css selector", "#token-input")
    token.clear()
    token.send_keys("40\n")
    time.sleep(0.5)
    settle()


def direct_timings(ctx, runs: list[str], repeats: int = 3) -> dict[str, float]:
    """Each render callback's function time with the reader's caches emptied (cold),
    called alone (no other callback competing for the cores): median of ``repeats``,
    worst run."""
    from ssmlens.dashboards import controls
    from ssmlens.dashboards.app import route
    from ssmlens.dashboards.pages import PAGES as MODULES, compare, interventions, states
    from ssmlens.dashboards.reader import clear_caches

    class Capture:
        def __init__(self):
            self.fns = {}

        def callback(self, *args, **kwargs):
            return lambda fn: self.fns.setdefault(fn.__name__, fn)

    cap = Capture()
    controls.register(cap, ctx)
    for page in MODULES:
        page.register(cap, ctx)
    worst: dict[str, float] = defaultdict(float)
    for run in runs:
        token = controls.default_token(ctx, run, 0, None)
        other = states.controls(ctx, run, None, None)[3]
        chosen = compare.run_choices(ctx, run)[1]
        result = interventions.controls(ctx, run)[1]
        calls = {
            "run_banner": (run, 0, token), "tokens_render": (run, 0, token, "delta"),
            "gating_render": (run, 0, token, 0, "horizon"), "states_render": (run, 0, token, 0),
            "states_attention": (run, 0, token, 0, other, "abs_mean"), "attention_render": (run, 0, token, 0, "mean"),
            "memory_render": (run, 0, token), "iv_result": (run, result, None),
            "iv_table": (run, "ablation", "acc", "absolute"), "cmp_render": (chosen, "patching/resid_pre", None),
            "runs_detail": (run,),
        }
        cap.fns["router"] = lambda path, run_id: route(ctx, path, run_id)
        calls.update({f"router {p}": (p, run) for p in PAGES})
        for name, args in calls.items():
            times = []
            for _ in range(repeats):
                clear_caches()
                start = time.perf_counter()
                cap.fns[name.split(" ")[0]](*args)
                times.append(1000 * (time.perf_counter() - start))
            worst[name] = max(worst[name], statistics.median(times))
    return dict(worst)


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores visible, load average {load_avg:.1f} at start"


def write_section(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = f"{SECTION}\n\n{text.rstrip()}\n\n"
    new = pattern.sub(lambda _: body, old) if pattern.search(old) else old.rstrip() + "\n\n" + body
    RESULTS.write_text(new.rstrip() + "\n")


def screenshots(driver, base: str, run: str, out: Path) -> list[Path]:
    """One PNG per page for ``run`` (Compare: every run); small: 1400 px wide."""
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    for path in PAGES:
        load(driver, f"{base}{path}?run={run}")
        time.sleep(0.3)
        name = out / f"{path.strip('/')}.png"
        driver.save_screenshot(str(name))
        saved.append(name)
    return saved


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", help="run stores to read (default: runs/ if the demo wrote runs there, else a sample)")
    p.add_argument("--screenshots", help="save one PNG per page here (e.g. docs/screenshots)")
    p.add_argument("--screenshot-run", default=None, help="run shown in the screenshots (default: the B'MOJO run)")
    p.add_argument("--no-write", dest="write", action="store_false", help="do not touch RESULTS.md")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from ssmlens.dashboards.app import create_app
    from ssmlens.dashboards.catalog import list_rows
    from ssmlens.dashboards.reader import clear_caches

    info = machine()
    tmp = None
    if args.runs:
        root, source = Path(args.runs), f"`{args.runs}`"
    elif demo_store_ready(ROOT / "runs"):
        root, source = ROOT / "runs", "the demo's `runs/`"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ssmlens-dash-bench-")
        t0 = time.perf_counter()
        root = build_store(Path(tmp.name))
        source = (f"a demo-like sample store (`ssmlens.dashboards.sample_store`: Mamba, Transformer, B'MOJO; 2 layers, "
                  f"d_model 64, 8 MQAR examples of 256 tokens; written in {time.perf_counter() - t0:.0f} s)")
    app = create_app(root)
    ctx = app.ssmlens
    runs = [r.run_id for r in list_rows(ctx.reader)[0] if r.openable]
    timer = RequestTimer(app)
    base, stop = serve(app)
    driver = browser()
    try:
        cold = load(driver, f"{base}/runs")  # JS bundles fetched, nothing cached yet
        renders: dict[str, dict[str, float]] = defaultdict(dict)
        for run in runs:
            for path in PAGES:
                clear_caches()  # every page's first render reads from disk
                renders[path][run] = load(driver, f"{base}{path}?run={run}")
        for run in runs:
            interact(driver, base, run)
        errors = [e["message"][:200] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        shots = []
        if args.screenshots:
            shot_run = args.screenshot_run or next((r for r in runs if "bmojo" in r), runs[0])
            driver.set_window_size(1400, 1250)
            shots = screenshots(driver, base, shot_run, ROOT / args.screenshots)
    finally:
        driver.quit()
        stop()
    direct = direct_timings(ctx, runs)

    lines = [f"`python benchmarks/dashboard.py` — {time.strftime('%Y-%m-%d')}, {info}; headless Chromium "
             f"(Debian), Flask threaded server, torch 1 thread. Store: {source}.", ""]
    lines += ["First render of each page (ms, navigation start → every figure drawn, server read caches "
              f"emptied before each page; target < {FIRST_RENDER_MS} ms):", ""]
    lines += ["| page | " + " | ".join(runs) + " | worst |", "|---|" + "---|" * (len(runs) + 1)]
    for path in PAGES:
        vals = [renders[path][r] for r in runs]
        lines.append(f"| {path} | " + " | ".join(f"{v:.0f}" for v in vals) + f" | **{max(vals):.0f}** |")
    lines += ["", f"Very first load (empty browser cache, /runs): {cold:.0f} ms.", ""]
    lines += [f"Server time per callback (ms; target < {CALLBACK_MS} ms): request = Flask handling of "
              "`/_dash-update-component` including Dash's JSON encoding, over every call the browser made (a page "
              "load fires several callbacks at once, which share 2 busy cores and the GIL); cold function = the "
              "callback alone, reader caches emptied, median of 3, worst run.", "",
              "| callback | calls | request median | request max | cold function |", "|---|---|---|---|---|"]
    router = [v for k, v in direct.items() if k.startswith("router")]
    direct = {k: v for k, v in direct.items() if not k.startswith("router")} | {"router": max(router)}
    names = sorted(set(timer.ms) | set(direct))
    for name in names:
        ms = timer.ms.get(name, [])
        med = f"{statistics.median(ms):.0f}" if ms else "–"
        mx = f"{max(ms):.0f}" if ms else "–"
        lines.append(f"| `{name}` | {len(ms)} | {med} | {mx} | {direct[name]:.0f} |" if name in direct
                     else f"| `{name}` | {len(ms)} | {med} | {mx} | – |")
    worst_render = max(max(v.values()) for v in renders.values())
    worst_cb = max([max(v) for k, v in timer.ms.items() if k != "(clientside)"] + list(direct.values()))
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"Worst first render {worst_render:.0f} ms (target {FIRST_RENDER_MS}); worst callback "
              f"{worst_cb:.0f} ms (target {CALLBACK_MS}). Browser console errors: {len(errors)}. "
              f"Load average {end_load:.1f} at the end."]
    if shots:
        lines += ["", "Screenshots: " + ", ".join(f"`{s.relative_to(ROOT)}`" for s in shots)]
    text = "\n".join(lines)
    print(text)
    for e in errors:
        print("console:", e)
    if args.write:
        write_section(text)
        print(f"\nwrote the {SECTION!r} section of {RESULTS}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
