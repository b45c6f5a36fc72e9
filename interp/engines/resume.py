"""Resume helpers: where a cell's own run lives, and whether it is already done.

A cell that writes a run store writes it at ``cell_url(study_url, key)``: a sibling of
the study's run (``runs/a`` -> ``runs/a.cells/<key>``), never inside it, because the
coordinator may replace its own run when it resumes. A cell is finished when its run is
complete and was made from the same config (``finished_run``); the caller skips it, so a
re-run of the same command computes only the cells that are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(key: str) -> str:
    """A file-name-safe form of a cell key; keys that needed changing get a short hash
    so that two keys never share a name."""
    name = _SAFE.sub("_", key).strip("._") or "cell"
    if name != key:
        name = f"{name[:80]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    return name


def cells_root(study_url: Any) -> str:
    """The folder (or URL prefix) that holds a study's cell runs: ``<study>.cells``."""
    url = os.fspath(study_url)
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    if "://" not in url:  # a local path: absolute, so that workers elsewhere find it too
        url = os.path.abspath(os.path.expanduser(url))
    return url.rstrip("/") + ".cells"


def cell_url(study_url: Any, key: str) -> str:
    """Where the cell ``key`` of the study at ``study_url`` writes its own run."""
    return f"{cells_root(study_url)}/{safe_name(key)}"


def same_config(a: Any, b: Any) -> bool:
    """Configs equal once written as JSON (tuples and lists, int and float keys alike)."""
    def canonical(x: Any) -> str:
        return json.dumps(json.loads(json.dumps(x, default=str)), sort_keys=True)

    return canonical(a) == canonical(b)


def finished_run(url: str, config: Any):
    """The run at ``url`` if it is complete and was made from ``config``, else None
    (missing, incomplete, made from another config, or unreadable: the cell runs again)."""
    from ssmlens.interp.store import StoreError, open_run

    try:
        run = open_run(url)
    except StoreError:
        return None
    return run if same_config(run.config, config) else None


def interrupted_run(url: str, config: Any) -> bool:
    """True when the run at ``url`` is incomplete and was made from ``config``: its
    coordinator stopped while writing it, so the same command may replace it."""
    from ssmlens.interp.store import StoreError, open_run

    try:
        run = open_run(url, require_complete=False)
    except StoreError:
        return False
    return not run.is_complete and same_config(run.config, config)
