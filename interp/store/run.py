"""Creating and opening runs: the format marker, overwrite protection, completeness.

A run is recognised by the ``ssmlens_format`` attribute that ``create_run`` writes
with the group itself (before anything else), and is whole only when
``ssmlens_complete`` is True, which ``RunWriter.finish()`` writes last.
"""

from __future__ import annotations

from typing import Any

import zarr

from ssmlens.interp.store import layout as L
from ssmlens.interp.store.encoding import CHUNK_BYTES, to_json
from ssmlens.interp.store.errors import (
    CorruptRunError, IncompleteRunError, NotARunError, RunExistsError, RunNotFoundError,
)
from ssmlens.interp.store.location import (
    UrlLike, check_marker, normalize, open_group, read_attrs, store_for_writing,
)
from ssmlens.interp.store.reader import Run
from ssmlens.interp.store.writer import RunWriter, now


def create_run(
    url: UrlLike, config: dict | Any, *, overwrite: bool = False, storage_options: dict | None = None,
    compression: str = "auto", chunk_bytes: int = CHUNK_BYTES,
) -> RunWriter:
    """Start a new run at ``url`` (local path or fsspec URL) and return its writer.

    ``config`` (a dict or a dataclass) is stored as JSON in the run's attributes.

    An existing ssmlens run there is replaced only with ``overwrite=True``. Anything
    else (a foreign zarr group, a non-empty directory, a damaged run) is never
    deleted: RunExistsError, whatever ``overwrite`` says.
    ``compression``: "auto" (floats raw, integers/bools zstd-1), "none", "zstd", "lz4".
    """
    url = normalize(url, storage_options)
    existing = None
    try:
        existing = open_group(url, "r", storage_options)
        attrs = read_attrs(url, existing)
        check_marker(url, attrs)
    except RunNotFoundError:
        pass
    except (NotARunError, CorruptRunError) as e:
        raise RunExistsError(
            f"refusing to create a run at {url}: {e}. interp.store only replaces its own runs; "
            "choose another path (or remove what is there yourself)"
        ) from None
    if existing is not None and not overwrite:
        state = "complete" if attrs.get(L.COMPLETE_ATTR) is True else "incomplete"
        raise RunExistsError(
            f"a run already exists at {url} ({state}, created {attrs.get(L.CREATED_ATTR)}); "
            "pass overwrite=True to replace it"
        )
    root_attrs = {
        L.FORMAT_ATTR: L.FORMAT_VERSION,
        L.COMPLETE_ATTR: False,
        L.CREATED_ATTR: now(),
        L.CONFIG_ATTR: to_json(config),
        L.METRICS_ATTR: {},
        L.CHECKPOINT_ATTR: None,
    }
    # "w" deletes the old run; "w-" fails if someone created a node here meanwhile.
    group = zarr.open_group(
        store_for_writing(url), mode="w" if existing is not None else "w-", zarr_format=3,
        storage_options=storage_options or None, attributes=root_attrs,
    )
    return RunWriter(group, url, compression=compression, chunk_bytes=chunk_bytes)


def open_run(url: UrlLike, *, require_complete: bool = True, storage_options: dict | None = None) -> Run:
    """Open a run for reading.

    Raises RunNotFoundError (nothing at ``url``), NotARunError (not an ssmlens run),
    CorruptRunError (unreadable metadata) or, for a run whose writer never finished,
    IncompleteRunError unless ``require_complete=False``.
    """
    url = normalize(url, storage_options)
    group = open_group(url, "r", storage_options)
    attrs = read_attrs(url, group)
    check_marker(url, attrs)
    run = Run(group, url, attrs)
    if require_complete and not run.is_complete:
        cause = f" Its writer recorded: {run.error}." if run.error else ""
        raise IncompleteRunError(
            f"run {url} is incomplete: its writer stopped before finish() (it was interrupted, "
            f"crashed, or is still running), so its data may be partial.{cause} To read what was "
            f"written anyway, use open_run({url!r}, require_complete=False)."
        )
    return run
