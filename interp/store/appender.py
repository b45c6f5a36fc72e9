"""Streaming rows onto an array that grows along axis 0, one whole chunk at a time.

An Appender buffers rows until whole chunks are available and hands them out as a
write job; the writer runs the jobs of all arrays together: ``grow`` (resize every
array), ``write_many`` (their chunks), ``commit`` (raise every ``ssmlens_rows``),
each step one batch of concurrent requests. Rows are raised only after the data is
on the store, so a killed writer leaves every array showing only stored rows.
``close()`` hands out the remainder (the array's last chunk, cut by its end); after
it more rows would be unaligned, so it refuses them.
"""

from __future__ import annotations

import asyncio

import numpy as np
import zarr
from zarr.core.sync import sync

from interp.store.layout import NAME_ATTR, ROWS_ATTR

Job = tuple[zarr.Array, np.ndarray, int]  # (array, rows [n, *trailing], first row)


class Appender:
    """Buffers rows for one array; ``add`` / ``close`` return jobs for ``grow``,
    ``write_many`` and ``commit``.

    Rows that do not fill a chunk wait in a chunk-sized buffer; two of them take turns
    for the array's whole life (a fresh buffer per chunk cost more in page faults than
    the copy itself). Whole chunks inside an incoming block are written from it directly.
    """

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.rows = int(array.attrs.get(ROWS_ATTR, 0))  # committed: on the store
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
            # That job still reads the buffer: the rest of ``data`` goes to the other one.
            self._buffer, self._spare = self._spare, self._buffer
        whole = (data.shape[0] - i) // c * c
        if whole:
            jobs.append((self.array, data[i : i + whole], row))
            i += whole
        if i < data.shape[0]:  # copy the rest: the caller may reuse its block after we return
            if self._buffer is None:
                self._buffer = np.empty((c, *data.shape[1:]), data.dtype)
            self._filled = data.shape[0] - i
            self._buffer[: self._filled] = data[i:]
        return jobs

    def close(self) -> list[Job]:
        """The job for the buffered remainder (the array's last, cut chunk); then final."""
        jobs = []
        if self._filled and not self._closed:
            jobs.append((self.array, self._buffer[: self._filled], self.rows))
        self._filled, self._closed = 0, True
        return jobs


def _gather(coros: list) -> None:
    async def run() -> None:
        await asyncio.gather(*coros)

    if coros:
        sync(run())


def grow(jobs: list[Job]) -> None:
    """Resize each job's array to hold its rows (before they are written)."""
    ends: dict[int, tuple[zarr.Array, int]] = {}
    for array, data, row0 in jobs:
        end = max(row0 + data.shape[0], ends.get(id(array), (array, 0))[1])
        ends[id(array)] = (array, end)
    _gather([
        array.async_array.resize((end, *array.shape[1:]), delete_outside_chunks=False)
        for array, end in ends.values()
    ])


def commit(pairs: list[tuple[Appender, Job]]) -> None:
    """Record that the jobs' rows are on the store (after ``write_many`` returned)."""
    done = {}
    for appender, (_, data, row0) in pairs:
        appender.rows = max(appender.rows, row0 + data.shape[0])
        done[id(appender)] = appender
    _gather([a.array.async_array.update_attributes({ROWS_ATTR: a.rows}) for a in done.values()])
