"""Creating and opening runs: the format marker, one writer per run, completeness.

A run is recognised by the ``ssmlens_format`` attribute that ``create_run`` writes
with the group itself (before anything else), and is whole only when
``ssmlens_complete`` is True, which ``RunWriter.finish()`` writes last. A writer holds
the run's lock (``ssmlens.interp.store.lock``) from before its first write until
``finish()`` / ``abort()``: a second writer is refused, never mixed in.
"""

from __future__ import annotations

from typing import Any

import zarr
from zarr.core.group import GroupMetadata
from zarr.core.metadata.io import save_metadata
from zarr.core.sync import sync
from zarr.storage import FsspecStore, StorePath

from ssmlens.interp.store import layout as L
from ssmlens.interp.store.encoding import CHUNK_BYTES, to_json
from ssmlens.interp.store.errors import (
    CorruptRunError, IncompleteRunError, NotARunError, RunExistsError, StoreError, UnwritableRunError,
)
from ssmlens.interp.store.location import (
    UrlLike, check_marker, dir_problem, normalize, os_reason, open_group, read_attrs, store_for_writing,
)
from ssmlens.interp.store.lock import LOCK_NAME, WriterLock, is_lock_entry, locked_error, read_holder
from ssmlens.interp.store.lockfiles import lock_files
from ssmlens.interp.store.reader import Run
from ssmlens.interp.store.writer import RunWriter, now


def create_run(
    url: UrlLike, config: dict | Any, *, overwrite: bool = False, storage_options: dict | None = None,
    compression: str = "auto", chunk_bytes: int = CHUNK_BYTES,
) -> RunWriter:
    """Start a new run at ``url`` (local path or fsspec URL) and return its writer.

    ``config`` (a dict or a dataclass) is stored as JSON in the run's attributes.

    The writer takes the run's lock first (one writer per run): while another writer
    holds it, RunLockedError (naming that writer: host, pid, start time), whatever
    ``overwrite`` says. An existing ssmlens run is replaced only with ``overwrite=True``;
    one whose writer died is taken over then, with a ``StaleLockWarning``. Anything
    else (a foreign zarr group, a non-empty directory, a damaged run) is never deleted:
    RunExistsError, whatever ``overwrite`` says. A path that cannot hold a run (a file
    in the way, no permission): UnwritableRunError, and nothing is left behind.
    ``compression``: "auto" (floats raw, integers/bools zstd-1), "none", "zstd", "lz4".
    """
    url = normalize(url, storage_options)
    try:
        lock = WriterLock.acquire(url, storage_options, overwrite=overwrite)
    except StoreError:
        raise
    except OSError as e:
        raise _unwritable(url, e) from None
    try:
        attrs = _existing_run(url, storage_options, lock.files)
        if attrs is not None and not overwrite:
            state = "complete" if attrs.get(L.COMPLETE_ATTR) is True else "incomplete"
            raise RunExistsError(
                f"a run already exists at {url} ({state}, created {attrs.get(L.CREATED_ATTR)}); "
                "pass overwrite=True to replace it"
            )
        for name in lock.files.entries():  # the old run (we hold its lock: nobody writes it)
            if not is_lock_entry(name):
                lock.files.remove_entry(name)
        root_attrs = {
            L.FORMAT_ATTR: L.FORMAT_VERSION,
            L.COMPLETE_ATTR: False,
            L.WRITER_ATTR: lock.holder.summary(),
            L.CREATED_ATTR: now(),
            L.CONFIG_ATTR: to_json(config),
            L.METRICS_ATTR: {},
            L.CHECKPOINT_ATTR: None,
        }
        store = store_for_writing(url)
        if isinstance(store, str):
            store = FsspecStore.from_url(url, storage_options=storage_options, read_only=False)
        sync(save_metadata(StorePath(store), GroupMetadata(attributes=root_attrs, zarr_format=3)))
        group = zarr.open_group(store, mode="r+")
    except BaseException as e:
        lock.abandon()
        if isinstance(e, OSError) and not isinstance(e, StoreError):
            raise _unwritable(url, e) from None
        raise
    return RunWriter(group, url, lock=lock, compression=compression, chunk_bytes=chunk_bytes)


def _unwritable(url: str, e: OSError) -> UnwritableRunError:
    return UnwritableRunError(f"cannot create a run at {url}: {os_reason(url, e)}", original=e)


def _existing_run(url: str, storage_options: dict | None, files) -> dict[str, Any] | None:
    """The attributes of the ssmlens run at ``url``; None if there is nothing;
    RunExistsError for anything that is not an ssmlens run (never deleted)."""
    names = [n for n in files.entries() if not is_lock_entry(n)]
    if not names:
        return None
    try:
        if "zarr.json" not in names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise NotARunError(f"{url} holds {shown} but no zarr.json: not an ssmlens run")
        group = open_group(url, "r", storage_options)
        attrs = read_attrs(url, group)
        check_marker(url, attrs)
        return attrs
    except (NotARunError, CorruptRunError) as e:
        raise RunExistsError(
            f"refusing to create a run at {url}: {e}. interp.store only replaces its own runs; "
            "choose another path (or remove what is there yourself)"
        ) from None


def check_creatable(url: UrlLike, *, overwrite: bool = False, storage_options: dict | None = None) -> None:
    """Raise what ``create_run(url, overwrite=...)`` would raise about the path, without
    writing anything: RunLockedError, RunExistsError or UnwritableRunError.

    For commands that compute first and write at the end: a wrong ``--out`` fails at
    once. ``create_run`` still checks again (another writer may come in between).
    """
    url = normalize(url, storage_options)
    if "://" not in url:
        _check_local_path(url)
    files = lock_files(url, storage_options)
    holder = read_holder(url, storage_options)
    raw_lock = files.read(LOCK_NAME)
    if raw_lock is not None:
        state = holder.state() if holder is not None else "unknown"
        if state != "gone":
            raise locked_error(url, files, holder, state)
        if not overwrite:
            raise RunExistsError(f"an incomplete run is at {url}: its writer ({holder.describe()}) is gone "
                                 "without finishing it; pass overwrite=True to replace it")
    attrs = _existing_run(url, storage_options, files)
    if attrs is not None and not overwrite:
        state = "complete" if attrs.get(L.COMPLETE_ATTR) is True else "incomplete"
        raise RunExistsError(f"a run already exists at {url} ({state}, created {attrs.get(L.CREATED_ATTR)}); "
                             "pass overwrite=True to replace it")


def _check_local_path(path: str) -> None:
    """UnwritableRunError unless a run's directory can be made (or written) at ``path``."""
    problem = dir_problem(path)
    if problem is not None:
        raise UnwritableRunError(f"cannot create a run at {path}: {problem}")


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
        holder = read_holder(url, storage_options)
        if holder is not None and holder.state() != "gone":
            why = f"its writer ({holder.describe()}) is still writing it"
        else:
            why = "its writer stopped before finish() (it was interrupted or crashed)"
        raise IncompleteRunError(
            f"run {url} is incomplete: {why}, so its data may be partial.{cause} To read what was "
            f"written anyway, use open_run({url!r}, require_complete=False)."
        )
    return run
