"""Streaming rows onto an array that grows along axis 0, one whole chunk at a time.

An Appender buffers rows until whole chunks are available and hands them out as a
write job; the writer runs the jobs of all arrays together: ``grow`` (each array at
its new length, in memory only), ``write_jobs`` (their chunks), ``commit`` (each
array's metadata, written once: shape and ``ssmlens_rows`` raised together), each
step one batch of concurrent requests on zarr's event loop. Nothing claims rows
before their data is on the store, so a killed writer leaves every array showing
only stored rows (chunks past its end are ignored by zarr).
``close()`` hands out the remainder (the array's last chunk, cut by its end); after
it more rows would be unaligned, so it refuses them.
"""

from __future__ import annotations

import numpy as np
from zarr.core.array import AsyncArray

from ssmlens.interp.store.chunked import Job, gather_all, stores_raw_bytes
from ssmlens.interp.store.layout import NAME_ATTR, ROWS_ATTR
from ssmlens.interp.store.nodes import save


class Appender:
    """Buffers rows for one array; ``add`` / ``close`` return jobs for ``grow``,
    ``write_jobs`` and ``commit``.

    Rows that do not fill a chunk wait in a chunk-sized buffer; two of them take turns
    for the array's whole life (a fresh buffer per chunk cost more in page faults than
    the copy itself). Whole chunks inside an incoming block are written from it directly.
    """

    def __init__(self, array: AsyncArray) -> None:
        self.array = array
        self.rows = int(array.attrs.get(ROWS_ATTR, 0))  # committed: on the store
        self.end = self.rows  # rows handed out in jobs: the length once they are committed
        self.chunk_rows = array.chunks[0]
        self._buffer: np.ndarray | None = None  # rows [rows, rows + _filled) of the array
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
        """Buffer rows ``data`` ``[n, *trailing]``; jobs for the chunks that are now whole.

        The jobs view ``data`` and the buffer: write them before the next ``add``.
        """
        self.check(data)
        c, jobs, row, i = self.chunk_rows, [], self.rows, 0
        if self._filled:
            i = min(c - self._filled, data.shape[0])
            self._buffer[self._filled : self._filled + i] = data[:i]
            self._filled += i
            if self._filled < c:
                return []
            jobs.append((self.array, self._buffer, row))
            row, self._filled = row + c, 0
            self.end = row
            # That job still reads the buffer: the rest of ``data`` goes to the other one.
            self._buffer, self._spare = self._spare, self._buffer
        whole = (data.shape[0] - i) // c * c
        if whole:
            jobs.append((self.array, data[i : i + whole], row))
            i += whole
            self.end = row + whole
        if i < data.shape[0]:  # copy the rest: the caller may reuse its block after we return
            if self._buffer is None:
                self._buffer = np.empty((c, *data.shape[1:]), data.dtype)
            self._filled = data.shape[0] - i
            self._buffer[: self._filled] = data[i:]
        return jobs

    def close(self) -> list[Job]:
        """The job for the buffered remainder (the array's last chunk, cut by its end);
        then final.

        Where chunks are stored as raw bytes the whole buffer is the job, its unused
        rows set to the fill value: zarr stores an edge chunk at full size anyway, and
        padding it here spares zarr a fresh chunk-sized array (page faults cost more
        than the write on a busy machine).
        """
        jobs = []
        if self._filled and not self._closed:
            self.end = self.rows + self._filled
            if stores_raw_bytes(self.array, self._buffer.dtype):
                self._buffer[self._filled :] = self.array.metadata.fill_value
                jobs.append((self.array, self._buffer, self.rows))
            else:
                jobs.append((self.array, self._buffer[: self._filled], self.rows))
        self._filled, self._closed = 0, True
        return jobs


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
