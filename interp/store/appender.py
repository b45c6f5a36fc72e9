"""Streaming rows onto an array that grows along axis 0, chunk-aligned, each call durable.

An Appender turns the rows of each ``add`` into write jobs; the writer runs the jobs of
all arrays together: ``grow`` (each array at its new length, in memory only),
``write_jobs`` (their chunks), ``commit`` (each array's metadata, written once: shape
and ``ssmlens_rows`` raised together), each step one batch of concurrent requests on
zarr's event loop. Nothing claims rows before their data is on the store, so a killed
writer leaves every array showing only stored rows (chunks past its end are ignored by
zarr).

Every row that ``add`` was given is written before ``add``'s jobs are done: whole
chunks as they are, and the rows of a chunk that is not full yet as that chunk, padded
(zarr stores an array's last chunk at full size anyway). The next ``add`` rewrites that
chunk with more rows, until it is full; chunk files are replaced whole (LocalStore:
temporary file and rename; object stores: one put), so a reader or a crash sees the
old or the new chunk, and both hold every committed row. A writer killed after
``append`` returned therefore keeps those rows (issue 12: it used to buffer them until
a chunk filled). Streamed arrays get chunks of a few blocks at most
(``encoding.stream_chunks``), which bounds what a rewrite costs.
"""

from __future__ import annotations

import numpy as np
from zarr.core.array import AsyncArray

from ssmlens.interp.store.chunked import Job, gather_all, stores_raw_bytes
from ssmlens.interp.store.layout import NAME_ATTR, ROWS_ATTR
from ssmlens.interp.store.nodes import save


class Appender:
    """Rows for one array; ``add`` returns jobs for ``grow``, ``write_jobs`` and ``commit``.

    The rows of the chunk that is not full yet wait in a chunk-sized buffer (and are
    written with every ``add``); two buffers take turns for the array's whole life (a
    fresh buffer per chunk cost more in page faults than the copy itself). Whole chunks
    inside an incoming block are written from it directly.
    """

    def __init__(self, array: AsyncArray) -> None:
        self.array = array
        self.rows = int(array.attrs.get(ROWS_ATTR, 0))  # committed: on the store
        self.end = self.rows  # rows handed out in jobs: the length once they are committed
        self.chunk_rows = array.chunks[0]
        self._buffer: np.ndarray | None = None  # rows [end - _filled, end) of the array
        self._spare: np.ndarray | None = None
        self._filled = 0
        self._closed = False

    @property
    def name(self) -> str:
        return self.array.attrs.get(NAME_ATTR, self.array.path)

    def check(self, data: np.ndarray) -> None:
        """Raise before anything is buffered if ``data`` cannot be appended here."""
        if self._closed:
            raise RuntimeError(f"{self.name}: appender is closed")
        if data.shape[1:] != self.array.shape[1:] or data.dtype != self.array.dtype:
            raise ValueError(
                f"{self.name}: appended rows have shape [n, {', '.join(map(str, data.shape[1:]))}] "
                f"{data.dtype}; earlier rows were [n, {', '.join(map(str, self.array.shape[1:]))}] "
                f"{self.array.dtype}"
            )

    def add(self, data: np.ndarray) -> list[Job]:
        """Rows ``data`` ``[n, *trailing]``; jobs that write every row given so far: the
        chunks that are now whole, and the last one, partial, padded.

        The jobs view ``data`` and the buffers: write them before the next ``add``.
        """
        self.check(data)
        c, jobs, i = self.chunk_rows, [], 0
        if data.shape[0] == 0:
            return jobs
        row = self.end - self._filled  # first row of the chunk being filled
        if self._filled:
            i = min(c - self._filled, data.shape[0])
            self._buffer[self._filled : self._filled + i] = data[:i]
            self._filled += i
            if self._filled == c:
                jobs.append((self.array, self._buffer, row))
                row, self._filled = row + c, 0
                # That job still reads the buffer: the rest of ``data`` goes to the other one.
                self._buffer, self._spare = self._spare, self._buffer
        whole = (data.shape[0] - i) // c * c
        if whole:
            jobs.append((self.array, data[i : i + whole], row))
            i += whole
            row += whole
        if i < data.shape[0]:  # copy the rest: the caller may reuse its block after we return
            if self._buffer is None:
                self._buffer = np.empty((c, *data.shape[1:]), data.dtype)
            self._filled = data.shape[0] - i
            self._buffer[: self._filled] = data[i:]
        if self._filled:
            jobs.append(self._partial(row))
        self.end = row + self._filled
        return jobs

    def _partial(self, row: int) -> Job:
        """The job for the chunk being filled (rows ``row : row + _filled``).

        Where chunks are stored as raw bytes the whole buffer is the job, its unused
        rows set to the fill value: zarr stores an edge chunk at full size anyway, and
        padding it here spares zarr a fresh chunk-sized array (page faults cost more
        than the write on a busy machine).
        """
        if stores_raw_bytes(self.array, self._buffer.dtype):
            self._buffer[self._filled :] = self.array.metadata.fill_value
            return (self.array, self._buffer, row)
        return (self.array, self._buffer[: self._filled], row)

    def close(self) -> list[Job]:
        """No more rows (every row was written by its ``add``): no jobs."""
        self._closed = True
        return []


def grow(pairs: list[tuple[Appender, Job]]) -> list[Job]:
    """The jobs, each aimed at its array grown to hold all the new rows; the grown
    arrays exist in memory only until ``commit``."""
    appenders = {id(appender): appender for appender, _ in pairs}
    grown = {}
    for key, appender in appenders.items():
        array, end = appender.array, appender.end
        metadata = array.metadata.update_shape((end, *array.shape[1:]))
        metadata = metadata.update_attributes({**array.attrs, ROWS_ATTR: end})
        grown[key] = AsyncArray(metadata=metadata, store_path=array.store_path, config=array.config)
    return [(grown[id(appender)], data, row0) for appender, (_, data, row0) in pairs]


async def commit(pairs: list[tuple[Appender, Job]], jobs: list[Job]) -> None:
    """Store the grown arrays' metadata (after ``write_jobs`` returned for ``jobs``)."""
    done: dict[int, tuple[Appender, AsyncArray]] = {}
    for (appender, _), (array, _, _) in zip(pairs, jobs):
        done[id(appender)] = (appender, array)
    await gather_all(save(array) for _, array in done.values())
    for appender, array in done.values():
        appender.array, appender.rows = array, array.shape[0]
