"""Array and group nodes of a run, made without asking the store anything.

``group.create_array`` on the run's store costs about seven store requests an array
(it checks that nothing exists at the path and that no parent is an array, and
re-puts every parent group's metadata), plus one more for the rows attribute; with
building the metadata that was about 1 ms of CPU an array, a third of
``write_cache``'s cost for 10 arrays of 20 MB (benchmarks/store.py). A run starts
empty and its writer tracks every node it made, so those checks are known to pass.
Here zarr's own ``init_array`` builds the metadata on a throwaway in-memory store (so
zarr picks codecs, fill value and encodings exactly as ``create_array`` would), once
per distinct array description; the writer stores it with a single write.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from zarr.core.array import AsyncArray, init_array
from zarr.core.group import GroupMetadata
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.metadata.io import save_metadata
from zarr.storage import MemoryStore, StorePath

# Metadata without attributes, by description: the hooks of one model share a few shapes.
_DRAFTS: dict[tuple, ArrayV3Metadata] = {}
_MAX_DRAFTS = 256


async def new_array(
    store_path: StorePath, *, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...],
    compressors: Any, dimension_names: tuple[str, ...] | None, attributes: dict[str, Any],
) -> AsyncArray:
    """An array at ``store_path`` whose metadata is not stored yet (``save`` does).

    Options as the writer has always used them: no check for all-fill chunks (a pass
    over the data, and an explicit chunk for every written row keeps "what was
    written" unambiguous), chunk files side by side (``c.0.0.0``: one folder per chunk
    index doubled the CPU cost of writes).
    """
    key = (tuple(shape), repr(dtype), tuple(chunks), repr(compressors), dimension_names)
    draft = _DRAFTS.get(key)
    if draft is None:
        made = await init_array(
            store_path=StorePath(MemoryStore()), shape=shape, dtype=dtype, chunks=chunks,
            compressors=compressors, dimension_names=dimension_names,
            chunk_key_encoding={"name": "default", "separator": "."},
        )
        draft = made.metadata
        if len(_DRAFTS) >= _MAX_DRAFTS:
            _DRAFTS.clear()
        _DRAFTS[key] = draft
    return AsyncArray(
        metadata=draft.update_attributes(attributes), store_path=store_path,
        config={"write_empty_chunks": True},
    )


async def save(array: AsyncArray) -> None:
    """Store ``array``'s metadata (``zarr.json``): from then on the node exists."""
    await save_metadata(array.store_path, array.metadata)


async def save_group(store_path: StorePath) -> None:
    """Store an empty group's metadata at ``store_path`` (a zarr v3 group, no attributes)."""
    await save_metadata(store_path, GroupMetadata(zarr_format=3))


def dtype_for_zarr(dtype: np.dtype) -> Any:
    """Object arrays (strings) are stored as zarr's variable-length strings."""
    return str if dtype == object else dtype
