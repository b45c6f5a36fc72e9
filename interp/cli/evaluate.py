"""``ssmlens evaluate``: the mechanistic evaluation of a suite of models in one command.

    ssmlens evaluate examples/suites/quick.yaml --out runs/eval-quick
    ssmlens evaluate examples/suites/arora-ar.yaml --out runs/eval-arora --engine ray --gpus-per-task 0.125

Trains every cell of the suite (or reuses a finished checkpoint with the same config
hash), analyses each model (accuracy, interchange interventions by role × layer ×
component, the association test, the short-conv ablation, B'MOJO's memory, token-mixing
matrices, SSM diagnostics), writes one run store per cell and the suite's run store
with the report (``--out``/report.html, report.md). Re-running skips finished cells; a
failed cell is recorded and the others go on (exit status 1 when any failed). The
suite format is in ``ssmlens.probes.evaluation.suite``. ``--engine ray`` runs each cell
as a Ray task with its share of a GPU (``ssmlens.interp.engines``; ``--address`` joins a
cluster); ``--set FIELD=VALUE`` overrides a field of the suite file (a dotted path, the
value read as YAML; e.g. ``--set widths=[16] --set train.device=cpu``).
"""

from __future__ import annotations

import sys

NAME = "evaluate"
HELP = "train and analyse every model of a suite YAML; write run stores and an HTML report"


def add_arguments(p) -> None:
    p.add_argument("suite", help="suite YAML file (e.g. examples/suites/quick.yaml)")
    p.add_argument("--out", required=True, help="output directory (models/, cells/, suite, report.html)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the suite (dotted path into the YAML, value as YAML; repeatable), "
                        "e.g. --set widths=[16] --set train.steps=50 --set models[0].lr=0.01")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per cell (default 1)")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="start no cell after this many seconds from the command's start (running ones finish); "
                        "the report covers what finished and the next run does the rest")
    p.add_argument("--no-report", dest="report", action="store_false", help="run the cells only")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    from ssmlens.interp.engines.cli import add_engine_arguments

    add_engine_arguments(p)


def run(args) -> int:
    import time

    from ssmlens.interp.cli import UsageError
    from ssmlens.interp.cli._checks import require_input, writable_dir
    from ssmlens.interp.engines.cli import engine_options, start_engine
    from ssmlens.probes.evaluation import load_suite, run_suite

    # errors (SuiteError is a ValueError, EngineError, a missing library) go through the
    # CLI's one error path: one line, exit 2, nothing written
    start = time.perf_counter()
    require_input(args.suite, "suite file")
    suite = load_suite(args.suite, overrides=args.overrides)
    engine = engine_options(args)
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    writable_dir(args.out, "--out")  # a suite there is resumed, not refused
    start_engine(engine)  # a wrong --address fails here, before anything is trained or written
    # --deadline counts from the command's start (Ray's start included)
    deadline = None if args.deadline is None else args.deadline - (time.perf_counter() - start)
    try:
        result = run_suite(suite, args.out, engine=engine, progress=args.progress, threads=args.threads,
                           report=args.report, deadline_s=deadline)
    except ImportError as e:  # checked before any training: a library the suite needs is missing
        raise UsageError(str(e)) from None
    n = len(suite.cells(args.out))
    not_run = n - len(result.outcomes)
    print(f"\n{len(result.rows)} of {n} cells finished ({len(result.skipped)} reused from an earlier run"
          + (f"; {not_run} not started before the deadline" if not_run else "") + ") "
          f"in {time.perf_counter() - start:.1f} s")
    for key, error in result.failed.items():
        print(f"FAILED {key}: {error.splitlines()[0] if error else ''}", file=sys.stderr)
    if result.report_md is not None and result.report_md.is_file():
        table = result.report_md.read_text().split("## Mechanism table", 1)[-1].split("\n## ", 1)[0]
        print("\nMechanism table" + table.rstrip())
        print(f"\nreport: {result.report_html}{' (unchanged)' if not result.report_rebuilt else ''}")
        print(f"suite run store: {result.out / 'suite'}; cell run stores under {result.out / 'cells'}")
    return 1 if result.failed else 0
