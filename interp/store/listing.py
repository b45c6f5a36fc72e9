"""``list_runs(root)``: every run store under a directory (or fsspec URL), one small
record each, without opening any array.

The walk reads only ``zarr.json`` files: a directory with one is a zarr node and is
not descended into (a run's sub-groups are not runs); a node without the ssmlens
marker is skipped; one whose ``zarr.json`` cannot be parsed is reported as corrupt.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from ssmlens.interp.store import layout as L
from ssmlens.interp.store.errors import RunNotFoundError
from ssmlens.interp.store.location import UrlLike, normalize


@dataclass
class RunInfo:
    """One run found by ``list_runs``. ``status``: "complete" | "incomplete" | "corrupt"."""

    url: str  # what open_run takes
    run_id: str  # path relative to the listed root, "/"-separated
    status: str
    config_summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    finished_at: str | None = None
    error: str | None = None  # why it is corrupt, or what stopped an incomplete run

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


def summarize_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """Scalar entries of a (nested) config, flattened to dotted keys: a table row."""
    if not isinstance(config, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(summarize_config(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
    return out


def _record(url: str, run_id: str, raw: bytes) -> RunInfo | None:
    """A RunInfo from one ``zarr.json``; None for a zarr node that is not a run."""
    try:
        meta = json.loads(raw)
        attrs = meta.get("attributes") or {}
        if not isinstance(attrs, dict):
            raise ValueError("'attributes' is not an object")
    except Exception as e:
        return RunInfo(url, run_id, "corrupt", error=f"unreadable zarr.json: {type(e).__name__}: {e}")
    if L.FORMAT_ATTR not in attrs:
        return None
    if meta.get("node_type") != "group":
        return RunInfo(url, run_id, "corrupt", error=f"node_type is {meta.get('node_type')!r}, not 'group'")
    metrics = attrs.get(L.METRICS_ATTR)
    return RunInfo(
        url, run_id,
        "complete" if attrs.get(L.COMPLETE_ATTR) is True else "incomplete",
        config_summary=summarize_config(attrs.get(L.CONFIG_ATTR)),
        metrics=metrics if isinstance(metrics, dict) else {},
        created_at=attrs.get(L.CREATED_ATTR),
        finished_at=attrs.get(L.FINISHED_ATTR),
        error=attrs.get(L.ERROR_ATTR),
    )


def list_runs(root: UrlLike, *, storage_options: dict | None = None) -> list[RunInfo]:
    """Every run under ``root`` (itself included), sorted by ``run_id``."""
    root = normalize(root, storage_options)
    fs, root_path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    root_path = root_path.rstrip("/") or "/"
    local = "://" not in root
    found: list[RunInfo] = []

    def visit(path: str) -> None:
        rel = os.path.relpath(path, root_path).replace(os.sep, "/")
        url = path if local else fs.unstrip_protocol(path)
        meta = f"{path.rstrip('/')}/zarr.json"
        try:
            has_meta = fs.isfile(meta)
        except Exception:
            return
        if has_meta:
            try:
                raw = fs.cat_file(meta)
            except Exception as e:
                found.append(RunInfo(url, rel, "corrupt", error=f"cannot read zarr.json: {e}"))
                return
            info = _record(url, rel, raw)
            if info is not None:
                found.append(info)
            return
        try:
            children = fs.ls(path, detail=True)
        except Exception:  # unreadable directory: nothing we can list there
            return
        for child in children:
            if child.get("type") == "directory":
                visit(child["name"])

    try:
        exists = fs.exists(root_path)
    except Exception as e:
        raise RunNotFoundError(
            f"cannot list runs under {root}: {type(e).__name__}: {e}", original=e
        ) from None
    if not exists:
        raise RunNotFoundError(f"cannot list runs under {root}: the path does not exist")
    visit(root_path)
    return sorted(found, key=lambda r: r.run_id)
