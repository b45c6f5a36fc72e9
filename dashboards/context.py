"""What every page's callbacks share: the reader, server-time measurements, and a
``callback`` helper that turns any failure into a message instead of a traceback.

Each callback is registered under a name (its "callback id" in benchmarks and the
``/_ssmlens/timings`` endpoint) and timed on the server; the benchmark reads those
times to check the 300 ms budget per callback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from dash import Output, no_update
from dash.exceptions import PreventUpdate

from ssmlens.dashboards import figures
from ssmlens.dashboards.reader import Reader, RunAccessError

log = logging.getLogger("ssmlens.dashboard")


class Timings:
    """Server time of every callback call, by callback name (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms: dict[str, list[float]] = defaultdict(list)

    def add(self, name: str, ms: float) -> None:
        with self._lock:
            self._ms[name].append(ms)

    def reset(self) -> None:
        with self._lock:
            self._ms.clear()

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {name: {"calls": len(v), "max_ms": max(v), "mean_ms": sum(v) / len(v), "first_ms": v[0]}
                    for name, v in sorted(self._ms.items()) if v}


def error_text(e: BaseException) -> str:
    """What the UI shows for an exception: the message for expected ones, the type and
    message (never a traceback) for bugs; the traceback goes to the server log."""
    if isinstance(e, RunAccessError):
        return str(e)
    log.exception("dashboard callback failed")
    return f"could not draw this ({type(e).__name__}: {e})"


def fallback(outputs: Sequence[Output], text: str) -> list[Any]:
    """Per output: a message figure for ``figure`` props, the text for ``children``
    (message slots, tables), and no change for everything else (selector values)."""
    out = []
    for o in outputs:
        if o.component_property == "figure":
            out.append(figures.message(text))
        elif o.component_property == "children":
            out.append(status_message(text))
        else:
            out.append(no_update)
    return out


def status_message(text: str | None, level: str = "error"):
    """A message line for a page's status slot (None: nothing to say)."""
    from dash import html

    if not text:
        return None
    return html.Div(text, className=f"ssm-msg ssm-msg-{level}", role="alert" if level == "error" else None)


class Context:
    """The reader and the timings of one app."""

    def __init__(self, runs_dir) -> None:
        self.reader = Reader(runs_dir)
        self.timings = Timings()

    def callback(self, app, name: str, outputs: Sequence[Output], inputs: Sequence, state: Sequence = (),
                 **kwargs) -> Callable[[Callable], Callable]:
        """Register ``fn`` as a Dash callback named ``name``: timed, and any exception
        turned into messages in the outputs (see ``fallback``) rather than a traceback."""
        outputs = list(outputs)
        single = kwargs.pop("single", False)

        def decorate(fn: Callable) -> Callable:
            def wrapped(*args):
                start = time.perf_counter()
                try:
                    return fn(*args)
                except PreventUpdate:
                    raise
                except Exception as e:
                    values = fallback(outputs, error_text(e))
                    return values[0] if single else values
                finally:
                    self.timings.add(name, 1000 * (time.perf_counter() - start))

            wrapped.__name__ = name
            wrapped.__qualname__ = name
            app.callback(outputs[0] if single else outputs, list(inputs), list(state), **kwargs)(wrapped)
            return fn

        return decorate
