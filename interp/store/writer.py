"""RunWriter: fills one run group (batch, cache, results, tables, metrics) and seals it.

Every write returns once its data is on the store (appended rows included: a
writer killed after ``append`` returned keeps them). A whole array's metadata is
written after its chunks (it appears complete or not at all); an appended array's
``ssmlens_rows`` is raised only after its rows were written; ``finish()`` writes the
completion marker last. A writer killed at any point therefore leaves a run that
readers see as incomplete, with every array showing exactly the rows that reached the
store.

One writer per run: a RunWriter holds the run's lock (``lock``) and checks, before
each write and before marking the run complete, that the lock still names it; if not
it stops (RunLockedError) and writes nothing more, not even its abort record.
Not thread-safe: used from one thread. Its store requests
(metadata and chunks of every array of one call) run concurrently on zarr's event
loop, whose codecs and local-file writes run in zarr's threads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.buffer import default_buffer_prototype
from zarr.core.array import AsyncArray
from zarr.core.sync import sync  # zarr's bridge to its event loop (what zarr.Array uses)

from ssmlens.interp.hook_names import dims_for
from ssmlens.interp.store import layout as L
from ssmlens.interp.store.appender import Appender, commit, grow
from ssmlens.interp.store.chunked import Job, gather_all, in_flight, write_jobs
from ssmlens.interp.store.encoding import (
    CHUNK_BYTES, STREAM_CHUNK_BYTES, choose_chunks, compressors_for, is_bit_stored, stream_chunks,
    to_json, to_numpy,
)
from ssmlens.interp.store.errors import RunClosedError, RunLockedError
from ssmlens.interp.store.lock import WriterLock
from ssmlens.interp.store.nodes import dtype_for_zarr, new_array, save, save_group
from ssmlens.interp.store.tables import encode_column, flatten
from ssmlens.interp.tasks.base import TaskBatch


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunWriter:
    """Writes one run; made by ``create_run``. Use as a context manager::

        with create_run("runs/mamba-ar", config) as w:
            w.write_batch(batch)
            w.write_cache(cache)                      # dict[str, Tensor] or ActivationCache
            w.write_result("patching/resid_pre", scores, ("layer", "pos"))
        # normal exit -> finish(); an exception -> abort(): data flushed, not complete
    """

    def __init__(
        self, group: zarr.Group, url: str, *, lock: WriterLock, compression: str = "auto",
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.url = url
        self.compression = compression
        self.chunk_bytes = chunk_bytes
        self._group = group
        self._lock = lock
        self._appenders: dict[str, Appender] = {}
        self._paths: set[str] = set()  # every array made so far (the run started empty)
        self._groups: set[str] = set()  # every group made so far
        self._state = "open"
        # A writer dropped without finish() / abort() (or open at exit) frees its run:
        # it can write no more, so the run is incomplete, not locked.
        self._release = weakref.finalize(self, lock.release)

    @property
    def writer(self) -> dict[str, Any]:
        """This writer's token, host, pid and start time (also in the run's attributes)."""
        return self._lock.holder.summary()

    # ---- arrays -------------------------------------------------------------------

    def _spec(self, name: str, shape: tuple[int, ...], dtype: np.dtype, dims: tuple[str, ...],
              attrs: dict[str, Any], torch_dtype: str | None,
              first_block: int | None = None) -> dict[str, Any]:
        """``new_array`` arguments for one array (checked; nothing is written).

        ``first_block``: the array is appended to (it starts empty), first with this many rows.
        """
        if len(dims) != len(shape):
            raise ValueError(f"{name}: {len(dims)} dims {dims} for an array of shape {shape}")
        if torch_dtype is not None:
            attrs = {**attrs, L.TORCH_DTYPE_ATTR: torch_dtype}
        itemsize = dtype.itemsize if dtype != object else 16  # strings: a guess per item
        if first_block is None:
            chunks = choose_chunks(shape, itemsize, self.chunk_bytes)
        else:
            target = min(self.chunk_bytes, STREAM_CHUNK_BYTES)
            chunks = stream_chunks(shape[1:], itemsize, first_block, target)
        return dict(
            shape=shape, dtype=dtype_for_zarr(dtype), chunks=chunks,
            compressors=compressors_for(
                dtype, self.compression, floating=dtype.kind in "fc" or is_bit_stored(torch_dtype)
            ),
            dimension_names=dims or None,
            attributes={L.NAME_ATTR: name, L.ROWS_ATTR: 0, **attrs},  # attrs may set the rows
        )

    def _claim(self, paths: list[tuple[str, str]]) -> list[str]:
        """Reserve new array paths ``(path, name)``; the parent groups still to make.

        The run started empty and every node made is in ``_paths`` / ``_groups``, so
        a path not there is free (no store request needed to know it).
        """
        seen = [path for path, _ in paths]
        for path, name in paths:  # refuse duplicates before making anything
            if path in self._paths or path in self._groups or seen.count(path) > 1:
                raise ValueError(f"{name!r} was already written to this run ({path})")
            parts = path.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in self._paths:
                    raise ValueError(f"{name!r}: {'/'.join(parts[:i])} is an array of this run, "
                                     f"it cannot hold {path}")
        groups = []
        for path, _ in paths:
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in self._groups:
                    self._groups.add(parent)
                    groups.append(parent)  # parents before children
            self._paths.add(path)
        return groups

    async def _make_groups(self, groups: list[str]) -> None:
        for path in groups:  # in order: a group's parent exists before it
            await save_group(self._group.store_path / path)

    async def _new_stored(self, path: str, spec: dict[str, Any]) -> AsyncArray:
        """Make the array and store its metadata (``ssmlens_rows`` 0): it exists, holding nothing."""
        array = await new_array(self._group.store_path / path, **spec)
        await save(array)
        return array

    def _write(self, path: str, name: str, value: Any, dims: tuple[str, ...] | None,
               attrs: dict[str, Any] | None = None) -> None:
        self._write_all([(path, name, value, dims, attrs)])

    def _write_all(self, items: list[tuple[str, str, Any, tuple[str, ...] | None, dict | None]]) -> None:
        """Write whole arrays (path, name, value, dims, attrs), all concurrently: each
        array's chunks, then its metadata (``ssmlens_rows`` = all rows). An array
        exists only once its data is stored; a writer killed before that leaves chunk
        files that no zarr.json names (invisible to readers), never a partial array."""
        self._check_open()
        prepared = []
        for path, name, value, dims, attrs in items:  # check everything before writing
            data, torch_dtype = to_numpy(value)
            dims = tuple(dims) if dims is not None else tuple(f"dim_{i}" for i in range(data.ndim))
            rows = data.shape[0] if data.ndim else 1
            attrs = {**(attrs or {}), L.ROWS_ATTR: rows}  # the metadata is written after the data
            spec = self._spec(name, data.shape, data.dtype, dims, attrs, torch_dtype)
            prepared.append((path, spec, data))
        groups = self._claim([(path, name) for path, name, *_ in items])

        async def write(gate: asyncio.Semaphore, path: str, spec: dict[str, Any], data: np.ndarray) -> None:
            array = await new_array(self._group.store_path / path, **spec)
            await write_jobs([(array, data, 0)], gate)
            await save(array)  # last: the array appears whole

        async def write_every() -> None:
            await self._make_groups(groups)
            gate = in_flight()  # chunk requests in flight, over all arrays
            await gather_all(write(gate, *item) for item in prepared)

        sync(write_every())

    def write_batch(self, batch: TaskBatch) -> None:
        """tokens/loss_mask ``[batch, pos]`` and roles ``[batch, k]`` -> ``batch/``."""
        self._write_all([
            (f"{L.BATCH}/tokens", "tokens", batch.tokens, ("batch", "pos"), None),
            (f"{L.BATCH}/loss_mask", "loss_mask", batch.loss_mask, ("batch", "pos"), None),
            *[(f"{L.BATCH}/{L.ROLES}/{L.escape_segment(role)}", role, pos, ("batch", "k"), None)
              for role, pos in batch.roles.items()],
        ])
        # Written last: a batch group without "task" is one whose writer was cut short.
        self._group[L.BATCH].update_attributes({
            "task": batch.task, "vocab_size": int(batch.vocab_size),
            "config": to_json(batch.config), "roles": list(batch.roles),
        })

    def write_cache(self, cache: Any, names: Iterable[str] | None = None) -> None:
        """One array per hook (``cache/<hook name>``, dims from ``dims_for``).

        ``cache``: a ``dict[str, Tensor]``, a transformer_lens ``ActivationCache`` or
        anything with ``.items()``; ``names`` keeps only those hooks.
        """
        keep = None if names is None else set(names)
        self._write_all([
            (f"{L.CACHE}/{L.escape_segment(name)}", name, value, dims_for(name, value.ndim), None)
            for name, value in cache.items() if keep is None or name in keep
        ])

    def append(self, name: str, chunk: Any, dims: Iterable[str] | None = None) -> None:
        """Stream rows ``chunk`` (``[n, *trailing]``) onto ``cache/<name>`` along axis 0.

        The rows are on the store when this returns (a writer killed later keeps them:
        ``open_run(url, require_complete=False)`` reads them); a chunk that is not full
        yet is written again by the next append. ``dims`` default: ``dims_for(name)``.
        """
        self._append_all([(name, chunk, dims)])

    def append_cache(self, cache: Any) -> None:
        """``append`` every entry of a cache (one forward pass's worth of rows); the
        chunks that fill up are written together."""
        self._append_all([(name, value, None) for name, value in cache.items()])

    def _append_all(self, items: list[tuple[str, Any, Iterable[str] | None]]) -> None:
        self._check_open()
        rows, new = [], {}
        for name, chunk, dims in items:  # check everything before buffering anything
            data, torch_dtype = to_numpy(chunk)
            if data.ndim == 0:
                raise ValueError(f"{name}: append needs rows ([n, ...]), got a scalar")
            if name not in self._appenders and name not in new:
                dims = tuple(dims) if dims is not None else dims_for(name, data.ndim)
                path = f"{L.CACHE}/{L.escape_segment(name)}"
                spec = self._spec(name, (0, *data.shape[1:]), data.dtype, dims, {}, torch_dtype,
                                  first_block=data.shape[0])
                new[name] = (path, spec)
            rows.append((name, data))
        if new:
            groups = self._claim([(path, name) for name, (path, _) in new.items()])

            async def make_all() -> list[AsyncArray]:
                await self._make_groups(groups)
                return await gather_all(self._new_stored(path, spec) for path, spec in new.values())

            for name, array in zip(new, sync(make_all())):
                self._appenders[name] = Appender(array)
        for name, data in rows:
            self._appenders[name].check(data)
        self._run_jobs([(self._appenders[name], self._appenders[name].add(data)) for name, data in rows])

    def _run_jobs(self, jobs: list[tuple[Appender, list[Job]]]) -> None:
        """Write the appenders' jobs together, then commit each (rows after data)."""
        pairs = [(a, job) for a, some in jobs for job in some]
        if pairs:
            sync(self._flush(pairs))

    @staticmethod
    async def _flush(pairs: list[tuple[Appender, Job]]) -> None:
        jobs = grow(pairs)
        await write_jobs(jobs)
        await commit(pairs, jobs)

    # ---- labelled results and tables ----------------------------------------------

    def write_result(self, name: str, data: Any, dims: Iterable[str] | None = None,
                     coords: Mapping[str, Iterable[Any]] | None = None,
                     attrs: Mapping[str, Any] | None = None) -> None:
        """A labelled array ``results/<name>`` (``name`` may hold ``/`` levels).

        ``data``: tensor, array or ``xarray.DataArray`` (whose dims, dimension
        coordinates and attrs are used when not given). ``coords``: dim -> labels, one
        per index along that dim (ints, floats or strings).
        """
        if isinstance(data, xr.DataArray):
            dims = data.dims if dims is None else dims
            coords = {d: data[d].values for d in data.dims if d in data.coords} if coords is None else coords
            attrs = data.attrs if attrs is None else attrs
            data = data.values
        values, _ = to_numpy(data)
        if dims is None:
            raise ValueError(f"result {name!r}: give dims (one name per axis of shape {values.shape})")
        dims = tuple(dims)
        labels = {}
        for dim, vals in (coords or {}).items():
            if dim not in dims:
                raise ValueError(f"result {name!r}: coords for {dim!r}, which is not one of dims {dims}")
            vals = to_json(vals.tolist() if hasattr(vals, "tolist") else list(vals))
            if len(vals) != values.shape[dims.index(dim)]:
                raise ValueError(f"result {name!r}: {len(vals)} labels for dim {dim!r} of length "
                                 f"{values.shape[dims.index(dim)]}")
            labels[dim] = vals
        extra = {L.KIND_ATTR: "result", L.COORDS_ATTR: labels, L.USER_ATTRS_ATTR: to_json(dict(attrs or {}))}
        self._write(f"{L.RESULTS}/{L.escape_path(name)}", name, data, dims, extra)

    def write_table(self, name: str, df: pd.DataFrame) -> None:
        """A DataFrame as ``tables/<name>/<column>``, one 1-d array per column."""
        self._check_open()
        flat, table_attrs = flatten(df)
        path = f"{L.TABLES}/{L.escape_path(name)}"
        if path in self._paths or path in self._groups:
            raise ValueError(f"table {name!r} was already written to this run ({path})")
        columns = []
        for column in flat.columns:
            values, attrs = encode_column(column, flat[column])
            key = f"{path}/{L.escape_segment(str(column))}"
            columns.append((key, str(column), values, ("row",), {**attrs, "column": to_json(column)}))
        groups = self._claim([(path, name)])  # checks the path and its parents
        self._paths.remove(path)  # a group, not an array
        self._groups.add(path)
        sync(self._make_groups([*groups, path]))
        self._write_all(columns)
        group = self._group[path]
        group.update_attributes({L.NAME_ATTR: name, **table_attrs})  # last: marks the table whole

    # ---- run attributes -----------------------------------------------------------

    def set_metrics(self, metrics: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Merge into the run's ``metrics`` attribute (JSON: numbers, strings, lists)."""
        self._check_open()
        merged = {**self._group.attrs.get(L.METRICS_ATTR, {}), **to_json({**(metrics or {}), **more})}
        self._group.update_attributes({L.METRICS_ATTR: merged})

    def set_checkpoint(self, path: str, *, sha256: str | None = None, compute_hash: bool = False) -> None:
        """Record the checkpoint the run came from; ``compute_hash`` reads it for a sha256."""
        self._check_open()
        if compute_hash and sha256 is None:
            digest = hashlib.sha256()
            with fsspec.open(str(path), "rb") as f:
                while block := f.read(2**22):
                    digest.update(block)
            sha256 = digest.hexdigest()
        self._group.update_attributes({L.CHECKPOINT_ATTR: {"path": str(path), "sha256": sha256}})

    # ---- lifecycle ----------------------------------------------------------------

    def finish(self) -> None:
        """Mark the run complete (the last write), if this writer still holds it; then
        release it."""
        if self._state == "finished":
            return
        self._check_open()
        self._run_jobs([(a, a.close()) for a in self._appenders.values()])
        self._check_token()
        self._group.update_attributes({L.COMPLETE_ATTR: True, L.FINISHED_ATTR: now()})
        self._state = "finished"
        self._release()

    def abort(self, error: BaseException | str | None = None) -> None:
        """Record ``error`` (the run stays incomplete) and release the run. A writer
        that lost its lock records nothing: the run is another writer's now."""
        if self._state != "open":
            if self._state == "lost":
                self._release()
            return
        self._state = "aborted"
        try:
            reason = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
            if self._lock.held():
                self._group.update_attributes({L.ERROR_ATTR: reason or "aborted", L.FINISHED_ATTR: now()})
        finally:
            self._release()

    def _check_open(self) -> None:
        """Before each write: the writer is open and still holds the run's lock."""
        if self._state != "open":
            raise RunClosedError(f"run {self.url} is {self._state}: no more writes")
        try:
            self._lock.check()
        except RunLockedError:
            self._state = "lost"
            raise

    def _check_token(self) -> None:
        """Before completion: the lock and the run's own ``ssmlens_writer`` name this writer."""
        self._check_open()
        raw = sync(self._group.store.get("zarr.json", default_buffer_prototype()))
        stored = (json.loads(raw.to_bytes()).get("attributes") or {}).get(L.WRITER_ATTR) if raw else None
        if not stored or stored.get("token") != self._lock.holder.token:
            self._state = "lost"
            raise RunLockedError(
                f"run {self.url} now belongs to another writer ({stored}); this writer stopped and "
                "did not mark it complete", lock_path=self._lock.path,
            )

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            try:
                self.abort(exc)
            except Exception as e:  # the caller's exception matters more than ours
                exc.add_note(f"ssmlens: recording the failure in {self.url} failed too: {e!r}")
        elif self._state == "open":
            self.finish()

    def __repr__(self) -> str:
        return f"RunWriter({self.url!r}, {self._state})"
