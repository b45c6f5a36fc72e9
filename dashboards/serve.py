"""Serving the dashboard: ``serve(runs_dir, host="127.0.0.1", port=8050)``.

The dashboard has no authentication and shows every run under ``runs_dir``, so it
listens on the loopback interface unless another host is asked for, and then says
what that exposes. waitress (multi-threaded, no debug server) is used when installed,
else Flask's own server.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:  # a host name: loopback only if every address it resolves to is
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def address(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/"


def serve(runs_dir: str | os.PathLike = "runs", host: str = "127.0.0.1", port: int = 8050) -> int:
    """Serve the dashboard over ``runs_dir`` until interrupted; returns an exit status."""
    from ssmlens.dashboards.app import create_app

    runs = Path(runs_dir).expanduser()
    if not runs.is_dir():
        print(f"note: {runs} does not exist yet; the Runs page will say so until runs are written there",
              file=sys.stderr)
    if not is_loopback(host):
        print(f"WARNING: serving on {host}, not on the loopback interface: anyone who can reach this machine "
              f"on port {port} can read every run under {runs.resolve()} (the dashboard has no "
              "authentication). Use --host 127.0.0.1 to keep it local.", file=sys.stderr)
    app = create_app(runs)
    print(f"ssmlens dashboard: {address(host, port)}  (runs under {runs.resolve()}; Ctrl+C to stop)", flush=True)
    try:
        try:
            from waitress import serve as waitress_serve
        except ImportError:
            app.run(host=host, port=port, debug=False)
        else:
            waitress_serve(app.server, host=host, port=port, threads=8, _quiet=True)
    except OSError as e:
        print(f"cannot serve on {address(host, port)}: {e.strerror or e} (is the port in use? try --port)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
