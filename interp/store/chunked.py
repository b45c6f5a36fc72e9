"""Chunk-aligned writes: every zarr write covers whole chunks (the last one may be cut
by the array's end), so zarr never reads a chunk back to merge a partial update.

Fast path. When an array's only codec is ``bytes`` (little-endian; no compressor,
no filter: the default for float activations) the zarr v3 spec makes a chunk's
stored form exactly its C-order little-endian bytes. A full chunk is then handed to
the store as it is, with no copy (``store_path / chunk_key``.set). zarr's own
``array[:] = data`` allocates, fills and copies a buffer per chunk; the direct path
wrote 2.3x as fast (benchmarks/store.py, 2-core VM). Every other chunk (an edge
chunk, which zarr pads to full size; compressed or string arrays) goes through
zarr's ``AsyncArray.setitem``, one call per chunk (then zarr skips its fill-and-copy;
its codecs run in threads). All chunks of all arrays of one write are requests on
zarr's event loop, at most ``async.concurrency`` of zarr's config at once (10 by
default: enough to overlap object-store requests, few enough for their connection
pools; a local disk's writes run one by one on the loop, see ``localfs``).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Awaitable, Iterable

import numpy as np
import zarr
from zarr.buffer import default_buffer_prototype
from zarr.codecs import BytesCodec
from zarr.core.array import AsyncArray


def in_flight() -> asyncio.Semaphore:
    """The gate for one write's chunk requests: zarr's ``async.concurrency`` at once
    (``zarr.config.set({"async.concurrency": n})`` tunes it, as for zarr's own I/O)."""
    return asyncio.Semaphore(max(1, int(zarr.config.get("async.concurrency"))))


Job = tuple[AsyncArray, np.ndarray, int]  # (array, rows [n, *trailing], first row)


def stores_raw_bytes(array: AsyncArray | zarr.Array, dtype: np.dtype) -> bool:
    """Whether a chunk of ``dtype`` values is stored as its raw in-memory bytes."""
    codecs = array.metadata.codecs
    return (
        sys.byteorder == "little" and dtype.isnative and dtype == array.dtype and dtype != object
        and len(codecs) == 1 and isinstance(codecs[0], BytesCodec)
        and (codecs[0].endian is None or codecs[0].endian.value == "little")
    )


def chunk_writes(array: AsyncArray, data: np.ndarray, row0: int) -> list[Awaitable[None]]:
    """One request per chunk to write ``data`` (``[n, *array.shape[1:]]``) into rows
    ``row0 : row0 + n`` of ``array``; ``row0`` must be a multiple of the chunk length."""
    if array.ndim == 0:
        return [array.setitem((), data)]
    chunks = array.chunks
    if row0 % chunks[0]:
        raise ValueError(f"unaligned write at row {row0} (chunk length {chunks[0]})")
    raw = stores_raw_bytes(array, data.dtype)
    prototype = default_buffer_prototype()
    starts = [range(0, data.shape[0], chunks[0])] + [
        range(0, n, c) for n, c in zip(data.shape[1:], chunks[1:])
    ]
    writes = []
    for corner in itertools.product(*starts):
        src = tuple(slice(s, s + c) for s, c in zip(corner, chunks))
        block = data[src]
        first = row0 + corner[0]
        if raw and block.shape == tuple(chunks):
            coords = (first // chunks[0], *(c // n for c, n in zip(corner[1:], chunks[1:])))
            key = array.metadata.encode_chunk_key(coords)
            flat = np.ascontiguousarray(block).reshape(-1).view(np.uint8)  # a view if contiguous
            writes.append((array.store_path / key).set(prototype.buffer.from_array_like(flat)))
        else:
            writes.append(array.setitem((slice(first, first + chunks[0]),) + src[1:], block))
    return writes


def close_all(awaitables: Iterable[Awaitable]) -> None:
    """Discard coroutines that will not be awaited (an error came up while making them)."""
    for aw in awaitables:
        if asyncio.iscoroutine(aw):
            aw.close()


async def gather_all(awaitables: Iterable[Awaitable], gate: asyncio.Semaphore | None = None) -> list:
    """Await every one (at most ``gate``'s count at once), then raise the first error.

    Unlike a bare ``asyncio.gather``, nothing is left running when this raises: a
    failed chunk write never races the writer's later steps (the abort record).
    """
    async def one(aw: Awaitable):
        if gate is None:
            return await aw
        async with gate:
            return await aw

    results = await asyncio.gather(*(one(aw) for aw in awaitables), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


async def write_jobs(jobs: list[Job], gate: asyncio.Semaphore | None = None) -> None:
    """For each job ``(array, data, row0)``, write ``data`` into rows ``row0 :`` of
    ``array``: all chunks of all jobs concurrently (as ``gate`` allows, by default
    ``in_flight()``). Every job is checked before anything is written."""
    writes: list[Awaitable] = []
    try:
        for array, data, row0 in jobs:
            writes += chunk_writes(array, data, row0)
    except BaseException:
        close_all(writes)
        raise
    await gather_all(writes, gate or in_flight())
