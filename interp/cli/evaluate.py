"""``ssmlens evaluate``: the mechanistic evaluation of a suite of models in one command.

    ssmlens evaluate examples/suites/quick.yaml --out runs/eval-quick

Trains every cell of the suite (or reuses a finished checkpoint with the same config
hash), analyses each model (accuracy, interchange interventions by role × layer ×
component, the association test, the short-conv ablation, B'MOJO's memory, token-mixing
matrices, SSM diagnostics), writes one run store per cell and the suite's run store
with the report (``--out``/report.html, report.md). Re-running skips finished cells; a
failed cell is recorded and the others go on (exit status 1 when any failed). The
suite format is in ``ssmlens.probes.evaluation.suite``.
"""

from __future__ import annotations

import sys

NAME = "evaluate"
HELP = "train and analyse every model of a suite YAML; write run stores and an HTML report"


def add_arguments(p) -> None:
    p.add_argument("suite", help="suite YAML file (e.g. examples/suites/quick.yaml)")
    p.add_argument("--out", required=True, help="output directory (models/, cells/, suite, report.html)")
    p.add_argument("--workers", type=int, default=1,
                   help="cells run side by side in this many processes (default 1: one after another, here)")
    p.add_argument("--gpus", type=int, default=None,
                   help="with --workers > 1: spread the workers over this many GPUs (worker i uses GPU i mod N)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per cell (default 1)")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="start no cell after this many seconds (running ones finish); the report covers what "
                        "finished and the next run does the rest")
    p.add_argument("--no-report", dest="report", action="store_false", help="run the cells only")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args) -> int:
    import time

    from ssmlens.probes.evaluation import SuiteError, load_suite, run_suite

    try:
        suite = load_suite(args.suite)
    except SuiteError as e:
        print(f"ssmlens evaluate: {e}", file=sys.stderr)
        return 2
    if args.workers < 1 or args.threads < 1:
        print("ssmlens evaluate: --workers and --threads must be >= 1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    engine = "processes" if args.workers > 1 else "local"
    try:
        result = run_suite(suite, args.out, engine=engine, workers=args.workers, devices=args.gpus,
                           progress=args.progress, threads=args.threads, report=args.report,
                           deadline_s=args.deadline)
    except ImportError as e:
        print(f"ssmlens evaluate: {e}", file=sys.stderr)
        return 2
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
