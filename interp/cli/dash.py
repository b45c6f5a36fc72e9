"""``ssmlens dash [--runs DIR] [--port 8050] [--host 127.0.0.1]``: the dashboard over
every run store under DIR (``dashboards``). Serves on the loopback interface unless
``--host`` says otherwise, and then warns that the runs become reachable.

``serve(runs_dir, host, port)`` is the same entry point for other commands
(``ssmlens demo`` ends with it).
"""

from __future__ import annotations

NAME = "dash"
HELP = "serve the dashboard over the run stores under a directory"


def add_arguments(parser) -> None:
    parser.add_argument("--runs", default="runs", metavar="DIR", help="directory holding run stores (default: runs)")
    parser.add_argument("--port", type=int, default=8050, help="port (default: 8050)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1; another host is reachable by others: "
                             "a warning says so)")


def serve(runs_dir="runs", host: str = "127.0.0.1", port: int = 8050) -> int:
    """Serve the dashboard until interrupted (imports dash only when called)."""
    from ssmlens.dashboards.serve import serve as _serve

    return _serve(runs_dir, host, port)


def run(args) -> int:
    from ssmlens.interp.cli import UsageError
    from ssmlens.interp.cli._checks import require_dir

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    require_dir(args.runs, "--runs")
    return serve(args.runs, args.host, args.port)
