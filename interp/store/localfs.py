"""zarr's LocalStore, with each large file's blocks reserved before it is written.

numpy's ``tofile`` (hence ``np.save``) calls ``fallocate(fd, FALLOC_FL_KEEP_SIZE, ...)``
before writing a large array; zarr's LocalStore just writes. On ext4 the reservation
made writes about 25% cheaper in CPU (200 MB as 10 files: 29 ms instead of 42 ms; as
80 files of 2.5 MB: 38 instead of 49; 2-core VM), as the filesystem then allocates
the file's blocks at once instead of page by page. It was most of the gap between
``write_cache`` and the raw ``np.save`` baseline of benchmarks/store.py.

Writes also run on zarr's event loop rather than in a thread each (``INLINE_BELOW``).
Everything else is zarr's: the temporary file and rename (a killed writer never
leaves a half-written key), the folders made on demand, reads. The reservation is a
hint: where the filesystem or the OS does not offer it, the file is written as
before. Used for runs that a writer creates on a local path; readers use zarr's
LocalStore.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
from pathlib import Path

from zarr.core.buffer import Buffer
from zarr.storage import LocalStore
from zarr.storage._local import _atomic_write  # zarr's temp-file-and-rename

# Below this a file is one or a few pages: not worth a system call (zarr.json files).
RESERVE_FROM = 2**16
# Below this a write runs on zarr's event loop itself, one after the other, instead of
# in a thread (zarr's way). A thread hop costs ~0.2-0.3 ms of CPU on a busy 2-core
# machine, more than writing a zarr.json; for 200 MB in 10 MB chunks, threads took a
# median 47 ms (18% more CPU) against 40 ms inline, though with a core idle their
# fastest round (29 ms) beat inline's (38 ms). Larger writes (a chunk size past the
# defaults) go to a thread so that the loop is never held long.
INLINE_BELOW = 64 * 2**20
_KEEP_SIZE = 1  # FALLOC_FL_KEEP_SIZE: reserve blocks, leave the file's length alone


def _fallocate():
    """libc's ``fallocate`` (Linux), or None. Not ``os.posix_fallocate``: where the
    filesystem cannot reserve, glibc emulates that one by writing every block."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate64  # libc, already loaded
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_FALLOCATE = _fallocate()


def _put(path: Path, value: Buffer, exclusive: bool = False) -> int:
    """zarr's ``_put`` (LocalStore), plus the reservation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    view = value.as_buffer_like()
    nbytes = memoryview(view).nbytes
    with _atomic_write(path, "wb", exclusive=exclusive) as f:
        if _FALLOCATE is not None and nbytes >= RESERVE_FROM:
            _FALLOCATE(f.fileno(), _KEEP_SIZE, 0, nbytes)  # a hint: a failure changes nothing
        return f.write(view)


class ReservingLocalStore(LocalStore):
    """A LocalStore whose writes reserve the file's blocks first (see the module)."""

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"ReservingLocalStore.set(): expected a Buffer, got {type(value)}")
        if len(value) < INLINE_BELOW:  # cheaper than a thread hop (see INLINE_BELOW)
            _put(self.root / key, value, exclusive)
        else:
            await asyncio.to_thread(_put, self.root / key, value, exclusive)
