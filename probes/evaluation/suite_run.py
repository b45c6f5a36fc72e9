"""Running a suite: skip finished cells, run the others as independent cells, record
every outcome, then write the suite's run store and its report.

Layout under the output directory ``out``::

    models/<key>-<hash>/   training runs (checkpoints, final/)      one per cell
    cells/<key>            the cell's run store (analyses)          one per cell
    cells.jsonl            one line per finished or failed cell, appended as they end
    suite                  the suite's run store: tables ``cells`` (status, error and
                           summary of every cell), ``mechanism``, ``accuracy``,
                           ``report`` (the HTML and markdown), results ``accuracy``
    report.html, report.md copies of the report, to open directly

A cell whose store is complete with the fingerprint its model and analysis config
give is not run again; a failed cell is recorded (status, error) and retried on the
next run. The report is rebuilt only when some cell changed.

The cells run on an engine of ``ssmlens.interp.engines`` (``run_cells``): ``local``, one
after another in this process, or ``ray``, each cell a Ray task with its share of a GPU
(``Cell.gpus``: the suite's ``resources.gpus``; by default 1 for a cell that trains on a
GPU, 0 on the CPU; ``gpus_per_task`` overrides it), on this machine or a cluster. A
cell writes only its own directories (its model, its cell store); only this process,
the coordinator, writes ``cells.jsonl`` and the suite's store, as cells finish. A cell
that raised or whose worker died is run again ``retries`` times (a training resumes
from its last checkpoint), then recorded as failed. A deadline is checked by each cell
when it starts (``cell.cell_task``): one that would start later returns at once and is
"not run" (the next run of the suite does it), so the same rule holds on every engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ssmlens.interp.engines import Cell, CellOutcome, run_cells
from ssmlens.probes.evaluation import cell as cell_module
from ssmlens.probes.evaluation.cell import NOT_STARTED, expected_fingerprint, finished_summary
from ssmlens.probes.evaluation.suite import Suite, load_suite

SUITE_KIND = "evaluation_suite"
REPORT_VERSION = 3


@dataclass
class SuiteResult:
    out: Path
    rows: dict[str, dict]  # key -> summary row of every finished cell
    outcomes: dict[str, CellOutcome]  # key -> outcome (finished before: status "done"); not run: absent
    skipped: list[str] = field(default_factory=list)  # cells finished before this run
    report_html: Path | None = None
    report_md: Path | None = None
    report_rebuilt: bool = False

    @property
    def failed(self) -> dict[str, str]:
        return {k: o.error or "" for k, o in self.outcomes.items() if o.status == "failed"}


def _error_text(outcome: CellOutcome) -> str:
    """The one-line error and the last lines of its traceback (the report shows both)."""
    tail = (outcome.detail or "").strip().splitlines()[-6:]
    return "\n".join([outcome.error or "", *tail]) if tail else (outcome.error or "")


def _not_started(outcome: CellOutcome) -> bool:
    return outcome.status == "done" and isinstance(outcome.result, dict) and bool(outcome.result.get(NOT_STARTED))


def _failed_before_deadline(outcome: CellOutcome) -> CellOutcome:
    """A cell whose attempt failed and whose retry then found the deadline passed is a
    failed cell (with the failure's error), not one that was "not run"; others as they are."""
    if not (_not_started(outcome) and outcome.earlier_errors):
        return outcome
    n = len(outcome.earlier_errors)
    return dataclasses.replace(
        outcome, status="failed", result=None,
        error=f"{outcome.earlier_errors[-1]} (attempt {n}; the retry found the suite's deadline passed)")


def _append_log(path: Path, outcome: CellOutcome) -> None:
    record = {"key": outcome.key, "status": outcome.status, "error": outcome.error,
              "attempts": outcome.attempts, "seconds": round(outcome.seconds, 2),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if isinstance(outcome.result, dict):
        record.update({k: outcome.result.get(k) for k in ("acc", "locus", "train_steps") if k in outcome.result})
    with path.open("a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def suite_fingerprint(keys: list[str], rows: dict[str, dict], outcomes: dict[str, CellOutcome]) -> str:
    """What the report depends on: the cells, their status and their stores' fingerprints."""
    parts = [[k, outcomes[k].status if k in outcomes else "not run", (rows.get(k) or {}).get("fingerprint"),
              outcomes[k].error if k in outcomes else None] for k in keys]
    return hashlib.sha256(json.dumps([REPORT_VERSION, parts], default=str).encode()).hexdigest()[:16]


def _previous_suite(path: Path) -> str | None:
    from ssmlens.interp.store import StoreError, open_run

    try:
        run = open_run(path)
    except StoreError:
        return None
    return run.config.get("fingerprint") if run.config.get("kind") == SUITE_KIND else None


def _check_dependencies(report: bool) -> None:
    """Fail before any training when a library the cells or the report need is missing
    (a bare GPU image), not after the models are trained."""
    import importlib.util

    needed = ["zarr", "xarray", "pandas", "yaml"] + (["plotly"] if report else [])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"ssmlens evaluate needs {', '.join(missing)} (not installed here)"
                          + ("; --no-report skips the report's plotly" if missing == ["plotly"] else ""))


def run_suite(suite: Suite | str | Path, out: str | Path, *, engine: str | dict = "local",
              address: str | None = None, gpus_per_task: float | None = None, retries: int = 1,
              progress: bool = True, threads: int | None = 1, report: bool = True,
              deadline_s: float | None = None) -> SuiteResult:
    """Run (or resume) ``suite`` into ``out`` (module docstring).

    engine: "local" or "ray" (or a dict of ``run_cells`` options, as ``run_study`` takes:
    ``{"engine": "ray", "gpus_per_task": 0.25}``); address, gpus_per_task, retries: those
    of ``ssmlens.interp.engines.run_cells``. threads: torch CPU threads per cell.
    deadline_s: no cell starts after this many seconds (running ones finish); the report
    covers what finished, the others are "not run" and the next run does them."""
    options = dict(engine) if isinstance(engine, dict) else {"engine": engine}
    options = {"address": address, "gpus_per_task": gpus_per_task, "retries": retries, **options}
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    _check_dependencies(report)
    out = Path(out).absolute()  # workers (other processes, other hosts) get absolute paths
    out.mkdir(parents=True, exist_ok=True)
    analysis = suite.analysis.to_dict()
    specs = suite.cells(out)
    rows: dict[str, dict] = {}
    outcomes: dict[str, CellOutcome] = {}
    todo, skipped = [], []
    # per-cell bars only when cells run here one at a time (Ray workers' bars would interleave)
    cell_bars = progress and options["engine"] == "local"
    deadline = None if deadline_s is None else time.time() + float(deadline_s)
    for spec in specs:
        d = dataclasses.asdict(spec)
        expected = expected_fingerprint(d, analysis)
        done = finished_summary(out, spec.key, expected) if expected else None
        if done is not None:
            rows[spec.key] = done
            outcomes[spec.key] = CellOutcome(spec.key, "done", done)
            skipped.append(spec.key)
            continue
        # cell_task is looked up here, not bound at import, so that a test can wrap it
        todo.append(Cell(spec.key, cell_module.cell_task, dict(
            out=str(out), spec=d, task=suite.task, task_config=suite.task_config, analysis=analysis,
            suite=suite.name, progress=cell_bars, threads=threads, deadline=deadline),
            gpus=spec.gpus, cpus=spec.cpus))
    log = out / "cells.jsonl"
    if todo:
        ended: dict[str, CellOutcome] = {}  # as logged: a failure the deadline cut short is failed

        def finished(outcome: CellOutcome) -> None:  # in this process, as each cell ends
            outcome = ended[outcome.key] = _failed_before_deadline(outcome)
            if not _not_started(outcome):
                _append_log(log, outcome)

        run_cells(todo, progress=progress, desc=f"suite {suite.name} ({len(todo)} of {len(specs)} cells to run)",
                  on_result=finished, **options)
        for key, outcome in ended.items():
            if _not_started(outcome):
                continue
            if outcome.status == "failed":
                outcome.error = _error_text(outcome)
            outcomes[key] = outcome
            if outcome.status == "done":
                rows[key] = outcome.result
    outcomes = {s.key: outcomes[s.key] for s in specs if s.key in outcomes}
    result = SuiteResult(out, rows, outcomes, skipped)
    if report:
        _write_suite(suite, out, specs, result)
    return result


def cell_table(specs, result: SuiteResult) -> pd.DataFrame:
    """One row per cell: its spec, status, error and summary numbers."""
    records = []
    for spec in specs:
        outcome = result.outcomes.get(spec.key)
        row = result.rows.get(spec.key) or {}
        rec = {"key": spec.key, "family": spec.family, "label": spec.label, "width": spec.width, "lr": spec.lr,
               "seed": spec.seed, "status": outcome.status if outcome else "not run",
               "error": (outcome.error or "") if outcome else ""}
        for k, v in row.items():
            if k not in rec and isinstance(v, (int, float, str, bool)) and not isinstance(v, list):
                rec[k] = v
        records.append(rec)
    df = pd.DataFrame(records)
    for c in df.columns:  # mixed-type columns (a metric missing in some cells) as floats or strings
        if df[c].dtype == object and not all(isinstance(v, str) for v in df[c].dropna()):
            try:
                df[c] = pd.to_numeric(df[c])
            except (TypeError, ValueError):
                df[c] = df[c].astype(str)
    return df


def _write_suite(suite: Suite, out: Path, specs, result: SuiteResult) -> None:
    from ssmlens.interp.store import create_run
    from ssmlens.probes.evaluation.summary import accuracy_array, mechanism_table
    from ssmlens.probes.report import build_report

    store = out / "suite"
    fp = suite_fingerprint([s.key for s in specs], result.rows, result.outcomes)
    result.report_html, result.report_md = out / "report.html", out / "report.md"
    if _previous_suite(store) == fp and result.report_html.is_file() and result.report_md.is_file():
        return
    cells = cell_table(specs, result)
    mechanism = mechanism_table(cells, suite.analysis)
    html, markdown = build_report(suite, out, cells, mechanism)
    config = {"kind": SUITE_KIND, "name": suite.name, "task": suite.task, "task_config": suite.task_config,
              "suite": suite.source, "cells": [s.key for s in specs], "fingerprint": fp,
              "report_version": REPORT_VERSION}
    with create_run(store, config, overwrite=True) as w:
        w.write_table("cells", cells)
        w.write_table("mechanism", mechanism)
        w.write_table("report", pd.DataFrame({"format": ["html", "markdown"], "content": [html, markdown]}))
        w.write_result("accuracy", accuracy_array(cells))
        w.set_metrics(n_cells=len(specs), n_done=sum(o.status == "done" for o in result.outcomes.values()),
                      n_failed=len(result.failed), failed=sorted(result.failed))
    result.report_html.write_text(html)
    result.report_md.write_text(markdown)
    result.report_rebuilt = True
