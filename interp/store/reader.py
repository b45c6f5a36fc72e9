"""Run: read access to one run group (made by ``open_run``).

Metadata (config, metrics, completion) is read once at open; arrays are read when
asked for. Results come back as ``xarray.DataArray`` (dims + coordinate labels),
tables as ``pandas.DataFrame``, the batch as ``TaskBatch`` and the cache as a lazy
mapping (``ssmlens.interp.store.lazy``).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
import zarr

from ssmlens.interp.store import layout as L
from ssmlens.interp.store.encoding import to_numpy_readable, to_torch
from ssmlens.interp.store.errors import CorruptRunError, IncompleteRunError, MissingEntryError
from ssmlens.interp.store.lazy import CacheView, natural_key
from ssmlens.interp.store.tables import TABLE_KIND, decode_column, unflatten
from ssmlens.interp.tasks.base import TaskBatch


class Run:
    """A stored run. ``url``, ``config``, ``metrics``, ``checkpoint``, ``is_complete``,
    ``created_at``, ``finished_at``, ``error`` (what stopped an incomplete run, if it
    was recorded); ``batch()``, ``cache``, ``result(name)``, ``table(name)``."""

    def __init__(self, group: zarr.Group, url: str, attrs: dict[str, Any]) -> None:
        self._group = group
        self.url = url
        self.attrs = attrs
        self.config: dict[str, Any] = attrs.get(L.CONFIG_ATTR) or {}
        self.metrics: dict[str, Any] = attrs.get(L.METRICS_ATTR) or {}
        self.checkpoint: dict[str, Any] | None = attrs.get(L.CHECKPOINT_ATTR)
        self.is_complete: bool = attrs.get(L.COMPLETE_ATTR) is True
        self.created_at: str | None = attrs.get(L.CREATED_ATTR)
        self.finished_at: str | None = attrs.get(L.FINISHED_ATTR)
        self.error: str | None = attrs.get(L.ERROR_ATTR)

    # ---- helpers ------------------------------------------------------------------

    def _corrupt(self, action: str, e: Exception) -> CorruptRunError:
        return CorruptRunError(f"cannot {action} of {self.url}: {type(e).__name__}: {e}", original=e)

    def _node(self, path: str) -> zarr.Group | zarr.Array | None:
        try:
            return self._group[path]
        except KeyError:
            return None
        except Exception as e:
            raise self._corrupt(f"read {path}", e) from None

    def _whole(self, array: zarr.Array, what: str) -> np.ndarray:
        """All of an array's stored values; IncompleteRunError if its writer was cut short."""
        rows, expected = array.attrs.get(L.ROWS_ATTR), (array.shape[0] if array.ndim else 1)
        if rows is not None and rows < expected:
            raise IncompleteRunError(
                f"{what} of {self.url} was being written when the writer stopped "
                f"({rows} of {expected} rows reached the store)"
            )
        try:
            return np.asarray(array[...])
        except Exception as e:
            raise self._corrupt(f"read {what}", e) from None

    def _members(self, path: str) -> list[tuple[str, Any]]:
        group = self._node(path)
        if not isinstance(group, zarr.Group):
            return []
        try:
            return list(group.members(max_depth=None))
        except Exception as e:
            raise self._corrupt(f"list {path}/", e) from None

    # ---- batch and cache ----------------------------------------------------------

    def batch(self) -> TaskBatch:
        """The task batch the run was made on: tokens/loss_mask ``[batch, pos]``, roles."""
        group = self._node(L.BATCH)
        if not isinstance(group, zarr.Group):
            raise MissingEntryError(f"run {self.url} has no batch (write_batch was not called)")
        attrs = group.attrs.asdict()
        if "task" not in attrs:
            raise IncompleteRunError(f"the batch of {self.url} was not completely written")

        def tensor(path: str, what: str) -> torch.Tensor:
            array = group[path]
            return to_torch(self._whole(array, what), array.attrs.get(L.TORCH_DTYPE_ATTR))

        roles = {r: tensor(f"{L.ROLES}/{L.escape_segment(r)}", f"role {r!r}") for r in attrs["roles"]}
        return TaskBatch(
            tensor("tokens", "tokens"), tensor("loss_mask", "loss_mask"), roles,
            attrs["vocab_size"], attrs["task"], attrs.get("config") or {},
        )

    @cached_property
    def cache(self) -> CacheView:
        """Hook name -> LazyArray (``cache[name][idx]`` reads only what idx touches)."""
        group = self._node(L.CACHE)
        return CacheView(group if isinstance(group, zarr.Group) else None, self.url)

    # ---- results and tables -------------------------------------------------------

    def results(self) -> list[str]:
        """Names of the results that were completely written, e.g. ``patching/resid_pre``."""
        names = []
        for key, node in self._members(L.RESULTS):
            if isinstance(node, zarr.Array) and node.attrs.get(L.KIND_ATTR) == "result":
                rows, expected = node.attrs.get(L.ROWS_ATTR, 0), (node.shape[0] if node.ndim else 1)
                if rows >= expected:
                    names.append(node.attrs.get(L.NAME_ATTR, L.unescape_path(key)))
        return sorted(names, key=natural_key)

    def result(self, name: str) -> xr.DataArray:
        """A labelled result: values with its dims, coordinate labels and attrs."""
        array = self._node(f"{L.RESULTS}/{L.escape_path(name)}")
        if not isinstance(array, zarr.Array):
            raise MissingEntryError(f"run {self.url} has no result {name!r}; results: {self.results()}")
        attrs = array.attrs.asdict()
        values = to_numpy_readable(self._whole(array, f"result {name!r}"), attrs.get(L.TORCH_DTYPE_ATTR))
        dims = tuple(array.metadata.dimension_names or ())
        return xr.DataArray(
            values, dims=dims, coords=attrs.get(L.COORDS_ATTR) or {},
            attrs=attrs.get(L.USER_ATTRS_ATTR) or {}, name=name,
        )

    def tables(self) -> list[str]:
        """Names of the tables that were completely written."""
        names = []
        for key, node in self._members(L.TABLES):
            if isinstance(node, zarr.Group) and node.attrs.get(L.KIND_ATTR) == TABLE_KIND:
                names.append(node.attrs.get(L.NAME_ATTR, L.unescape_path(key)))
        return sorted(names, key=natural_key)

    def table(self, name: str) -> pd.DataFrame:
        """A stored DataFrame, with its column order, dtypes and index."""
        group = self._node(f"{L.TABLES}/{L.escape_path(name)}")
        attrs = group.attrs.asdict() if isinstance(group, zarr.Group) else {}
        if attrs.get(L.KIND_ATTR) != TABLE_KIND:
            if isinstance(group, zarr.Group) and not self.is_complete:
                raise IncompleteRunError(f"table {name!r} of {self.url} was not completely written")
            raise MissingEntryError(f"run {self.url} has no table {name!r}; tables: {self.tables()}")
        columns = {}
        for column in attrs["columns"]:
            array = group[L.escape_segment(str(column))]
            values = self._whole(array, f"column {column!r} of table {name!r}")
            columns[column] = decode_column(values, array.attrs.asdict())
        return unflatten(columns, attrs)

    def __repr__(self) -> str:
        state = "complete" if self.is_complete else "INCOMPLETE"
        return f"Run({self.url!r}, {state}, created {self.created_at})"
