"""Lazy views of stored activations: ``run.cache["blocks.0.mixer.hook_delta"][0, 5:9]``
reads only the chunks that the index touches and returns a torch tensor.

Indexing follows numpy for ints, slices (any step), ``...`` and one integer or boolean
array; with several arrays the selection is *orthogonal* (each array picks along its
own axis, as zarr's ``oindex`` and xarray's ``isel``), not numpy's broadcasting.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import zarr

from ssmlens.interp.store.encoding import to_numpy_readable, to_torch
from ssmlens.interp.store.errors import CorruptRunError, MissingEntryError
from ssmlens.interp.store.layout import NAME_ATTR, ROWS_ATTR, TORCH_DTYPE_ATTR, unescape_segment


def visible_shape(array: zarr.Array) -> tuple[int, ...]:
    """The array's shape limited to the rows its writer committed (``ssmlens_rows``)."""
    rows = array.attrs.get(ROWS_ATTR)
    if array.ndim == 0 or rows is None:
        return tuple(array.shape)
    return (min(int(rows), array.shape[0]), *array.shape[1:])


def normalize_key(key: Any, shape: tuple[int, ...], dims: tuple[str, ...]) -> tuple:
    """A numpy-style index -> zarr orthogonal selection, bounds-checked against ``shape``."""
    key = key if isinstance(key, tuple) else (key,)
    key = tuple(k.cpu().numpy() if isinstance(k, torch.Tensor) else k for k in key)
    if any(k is None for k in key):
        raise IndexError("None (newaxis) is not supported: index the returned tensor instead")
    ellipses = [i for i, k in enumerate(key) if k is Ellipsis]  # `in` would compare arrays
    if len(ellipses) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if ellipses:
        i = ellipses[0]
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1 :]
    if len(key) > len(shape):
        raise IndexError(f"too many indices: {len(key)} for an array of dims {dims}")
    key = key + (slice(None),) * (len(shape) - len(key))
    out: list[Any] = []
    for k, n, dim in zip(key, shape, dims):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            # zarr takes only positive steps: a reversed slice becomes explicit indices.
            out.append(slice(start, max(start, stop), step) if step > 0 else np.arange(start, stop, step))
        elif isinstance(k, (int, np.integer)):
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of bounds for dim {dim!r} of length {n}")
            out.append(int(k) % n)
        else:
            idx = np.asarray(k)
            if idx.dtype == bool:
                if idx.shape != (n,):
                    raise IndexError(f"boolean index of shape {idx.shape} for dim {dim!r} of length {n}")
                idx = np.flatnonzero(idx)
            elif idx.ndim != 1 or idx.dtype.kind not in "iu":
                raise IndexError(f"unsupported index for dim {dim!r}: {k!r}")
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise IndexError(f"index out of bounds for dim {dim!r} of length {n}")
            out.append(idx % n if n else idx)
    return tuple(out)


class LazyArray:
    """One stored array, read on demand. ``x[idx]`` -> torch tensor of the stored dtype.

    ``shape`` / ``dims`` / ``dtype`` describe what is visible: in an incomplete run an
    array shows only the rows that reached the store.
    """

    def __init__(self, array: zarr.Array, name: str, url: str) -> None:
        self._array = array
        self.name = name
        self.url = url
        self.shape = visible_shape(array)
        self._torch_dtype = array.attrs.get(TORCH_DTYPE_ATTR)
        names = array.metadata.dimension_names
        self.dims: tuple[str, ...] = tuple(names) if names else tuple(f"dim_{i}" for i in range(array.ndim))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> torch.dtype:
        if self._torch_dtype is not None:
            return getattr(torch, self._torch_dtype)
        return to_torch(np.zeros(0, self._array.dtype.to_native_dtype()), None).dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self._array.chunks)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def _read(self, key: Any) -> np.ndarray:
        selection = normalize_key(key, self.shape, self.dims)
        try:
            return np.asarray(self._array.get_orthogonal_selection(selection))
        except Exception as e:  # a damaged or missing chunk surfaces here
            raise CorruptRunError(
                f"cannot read {self.name!r} from {self.url}: {type(e).__name__}: {e}", original=e
            ) from None

    def __getitem__(self, key: Any) -> torch.Tensor:
        return to_torch(self._read(key), self._torch_dtype)

    def numpy(self, key: Any = ...) -> np.ndarray:
        """Values as numpy (bfloat16/float8 upcast to float32, which numpy lacks)."""
        return to_numpy_readable(self._read(key), self._torch_dtype)

    def load(self) -> torch.Tensor:
        """The whole (visible) array as a tensor."""
        return self[...]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self.numpy()
        return values if dtype is None else values.astype(dtype)

    def __repr__(self) -> str:
        shape = ", ".join(f"{d}={n}" for d, n in zip(self.dims, self.shape))
        return f"LazyArray({self.name!r}, {shape}, {self.dtype})"


def natural_key(name: str) -> list:
    """Sort ``blocks.2`` before ``blocks.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class CacheView(Mapping[str, LazyArray]):
    """The run's activation cache: hook name -> LazyArray, like an ``ActivationCache``
    whose values stay on disk until indexed."""

    def __init__(self, group: zarr.Group | None, url: str) -> None:
        self._group = group
        self.url = url
        self._entries: dict[str, LazyArray] | None = None

    @property
    def entries(self) -> dict[str, LazyArray]:
        if self._entries is None:
            found: dict[str, LazyArray] = {}
            if self._group is not None:
                try:
                    for key, array in self._group.arrays():
                        name = array.attrs.get(NAME_ATTR, unescape_segment(key))
                        found[name] = LazyArray(array, name, self.url)
                except Exception as e:
                    raise CorruptRunError(
                        f"cannot list the cache of {self.url}: {type(e).__name__}: {e}", original=e
                    ) from None
            self._entries = {k: found[k] for k in sorted(found, key=natural_key)}
        return self._entries

    def __getitem__(self, name: str) -> LazyArray:
        try:
            return self.entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.entries), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise MissingEntryError(
                f"the cache of {self.url} has no hook {name!r} ({len(self.entries)} cached{hint})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def to_activation_cache(self, names: Iterable[str] | None = None, model: Any = None):
        """Load ``names`` (default: all) into a ``transformer_lens.ActivationCache``."""
        from transformer_lens import ActivationCache

        names = list(self.entries) if names is None else list(names)
        return ActivationCache({n: self[n].load() for n in names}, model)

    def __repr__(self) -> str:
        return f"CacheView({self.url!r}, {len(self)} hooks)"
