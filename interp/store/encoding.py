"""How values become zarr arrays and attributes: dtypes, chunk shapes, codecs, JSON.

Choices here were measured with ``benchmarks/store.py`` (200 MB of float32):

- Float activations are stored uncompressed. Their mantissas are noise: zstd level 1
  saved 8% of the bytes and blosc-lz4+shuffle 5%, at 3-4x the CPU per byte written.
- Integers and booleans (tokens, masks, positions) compress many-fold with zstd
  level 1 at little cost, and are small anyway.
- Chunks hold at most 16 MiB: whole rows along the batch axis, and only if one row
  is larger than that, a block of positions (then further axes). Every chunk is a
  file (object) with a fixed cost: writing 200 MB of [32, 256, 610] float32 took
  ~1.3x the CPU in 2.5 MB chunks (the 4 MiB target) as in 10 MB ones (16 MiB), which
  cost about what one file per array does. A dashboard reading one example still
  reads at most one chunk (16 MiB). The chunk length is picked to waste little on
  the last chunk, which zarr stores at full size.
- Appended (streamed) arrays have chunks of at most 4 MiB, in step with the first
  block appended: a multiple of its rows, or a divisor when it is larger. Equal
  blocks then never straddle chunks, and blocks at least a chunk long are written
  from the caller's memory without a copy. Streaming 200 MB in blocks of 4 examples
  wrote at ~2x the speed of 6-row chunks straddling the blocks (benchmarks/store.py).
  Every ``append`` writes all its rows before it returns, the last chunk partial
  (``appender``), and that chunk is written again by the next ``append`` until it is
  full: a chunk holds several blocks only while it stays under 256 KiB
  (``STREAM_REWRITE_BYTES``), so a rewrite costs about what opening a file does.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import PurePath
from typing import Any

import numpy as np
import torch
from zarr.codecs import BloscCodec, ZstdCodec

CHUNK_BYTES = 16 * 2**20
STREAM_CHUNK_BYTES = 4 * 2**20
STREAM_REWRITE_BYTES = 2**18  # the most a partial chunk that ``append`` rewrites holds

# torch dtypes without a numpy twin, stored as their raw bits.
_BITS_DTYPES: dict[torch.dtype, tuple[torch.dtype, np.dtype]] = {
    torch.bfloat16: (torch.int16, np.dtype(np.uint16)),  # (same-width torch int, numpy bits)
}
for _name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
    if hasattr(torch, _name):
        _BITS_DTYPES[getattr(torch, _name)] = (torch.uint8, np.dtype(np.uint8))

COMPRESSIONS = ("auto", "none", "zstd", "lz4")


def torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def to_numpy(value: Any) -> tuple[np.ndarray, str | None]:
    """A tensor / array / scalar -> (numpy array to store, torch dtype name or None).

    Tensors are detached and moved to the CPU; dtypes numpy lacks (bfloat16, float8)
    are returned as their raw bits (uint16 / uint8), so the round trip is exact. The
    torch dtype name is returned for every tensor so the reader restores it.
    """
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        name = torch_dtype_name(t.dtype)
        if t.dtype in _BITS_DTYPES:
            view_dtype, np_dtype = _BITS_DTYPES[t.dtype]
            return t.contiguous().view(view_dtype).numpy().view(np_dtype), name
        return t.contiguous().numpy(), name
    return np.asarray(value), None


def to_torch(array: np.ndarray, torch_dtype: str | None) -> torch.Tensor:
    """Inverse of ``to_numpy``: the stored numpy array -> a tensor of the original dtype."""
    array = np.require(array, requirements="C")  # not ascontiguousarray: it makes 0-d 1-d
    if torch_dtype is None:
        return torch.from_numpy(array)
    dtype = getattr(torch, torch_dtype)
    if dtype in _BITS_DTYPES:
        return torch.from_numpy(array.view(_BITS_DTYPES[dtype][1])).view(dtype)
    return torch.from_numpy(array).to(dtype)


def to_numpy_readable(array: np.ndarray, torch_dtype: str | None) -> np.ndarray:
    """Stored array -> a numpy array of its values (bit-stored dtypes upcast to float32),
    for xarray and pandas, which have no bfloat16."""
    if is_bit_stored(torch_dtype):
        return to_torch(array, torch_dtype).float().numpy()
    return array


def least_padding(n: int, most: int) -> int:
    """A chunk length <= ``most`` whose chunks cover ``n`` entries with little padding.

    zarr stores an edge chunk at full size: 32 rows in chunks of 6 would store 36,
    chunks of 4 store 32. Tries the fewest chunks k and a few more (chunks no
    smaller than about half of ``most``), each of length ceil(n / k).
    """
    if n <= most or most <= 1 or n >= 2**40:  # 2**40: an array that grows, extent unknown
        return max(1, min(n, most))
    k0 = -(-n // most)
    candidates = range(k0, min(2 * k0, k0 + 64) + 1)
    k = min(candidates, key=lambda k: (k * -(-n // k) - n, k))
    return -(-n // k)


def choose_chunks(shape: tuple[int, ...], itemsize: int, target: int = CHUNK_BYTES) -> tuple[int, ...]:
    """Chunk shape of at most ~``target`` bytes, whole trailing axes first.

    [batch=32, pos=256, d=640] float32 (655 KB a row) -> (16, 256, 640);
    [batch, pos=256, d_inner=1536, d_state=16] (25 MB a row) -> (1, 128, 1536, 16).
    An array that grows along axis 0 passes a huge first extent (``sys.maxsize``).
    """
    chunks = [max(1, n) for n in shape]
    for axis in range(len(shape)):
        inner = itemsize * math.prod(chunks[axis + 1 :])
        if inner <= target:
            chunks[axis] = least_padding(chunks[axis], max(1, target // inner))
            break
        chunks[axis] = 1  # one index of this axis is already too big: split further in
    return tuple(chunks)


def stream_chunks(trailing: tuple[int, ...], itemsize: int, first: int, target: int,
                  rewrite: int = STREAM_REWRITE_BYTES) -> tuple[int, ...]:
    """Chunk shape for an array appended to along axis 0, whose first block has
    ``first`` rows: at most ``target`` bytes, and when whole rows fit, a chunk length
    in step with that block (a multiple of ``first``, or a divisor of it no smaller
    than half the most rows that fit). Several blocks share a chunk only up to
    ``rewrite`` bytes: every append rewrites the chunk it leaves partial."""
    chunks = choose_chunks((sys.maxsize, *trailing), itemsize, target)
    most = chunks[0]
    if chunks[1:] != tuple(max(1, n) for n in trailing) or most <= 1:
        return chunks  # rows are split
    row_bytes = itemsize * math.prod(chunks[1:])
    if first <= 0:  # no block to follow
        return (max(1, min(most, rewrite // row_bytes)), *chunks[1:])
    if first <= most:
        rows = first * max(1, min(most // first, rewrite // (first * row_bytes)))
    else:
        rows = max((d for d in range(1, most + 1) if first % d == 0), default=1)
        rows = rows if 2 * rows >= most else most
    return (rows, *chunks[1:])


def is_bit_stored(torch_dtype: str | None) -> bool:
    """Whether a torch dtype is stored as raw bits (bfloat16, float8)."""
    return torch_dtype is not None and getattr(torch, torch_dtype, None) in _BITS_DTYPES


def compressors_for(
    dtype: np.dtype, compression: str = "auto", *, floating: bool | None = None
) -> tuple[Any, ...] | None:
    """Codec chain for one array; ``compression`` is one of ``COMPRESSIONS``.

    ``floating`` marks bit-stored floats (uint16 bfloat16 bits), which compress like
    floats, not like integers; by default it follows ``dtype``.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    floating = dtype.kind in "fc" if floating is None else floating
    if compression == "none" or (compression == "auto" and floating):
        return None
    if compression in ("auto", "zstd"):
        return (ZstdCodec(level=1),)
    return (BloscCodec(cname="lz4", clevel=1, shuffle="shuffle", typesize=dtype.itemsize),)


def to_json(value: Any) -> Any:
    """Config, metrics and labels -> JSON-able values.

    numpy scalars/arrays, tensors, tuples and paths become their plain JSON
    equivalents; anything else unknown is stored as its ``str`` (a config may hold a
    dtype or a class; the string is what a reader can use).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return to_json(value.tolist())
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(dataclasses.asdict(value))
    return str(value)
