"""Server-side access to the run stores under the dashboard's runs directory.

The browser only ever sends *run ids* (paths relative to the runs directory, such as
``demo/mamba``); everything it names is validated here before a file is touched:
absolute paths, ``..`` segments, URLs and symlinks that lead outside the directory are
refused, and a path that is not a complete run is refused with a message that the
pages show instead of a traceback (``RunAccessError``).

Reads are memoized (an LRU like ``functools.lru_cache`` that also computes each key
once when callbacks ask concurrently: ``ssmlens.dashboards.memo``) keyed by ``(run path,
mtime)`` plus what is read, where mtime is that of the run's ``zarr.json`` (rewritten
when a run is replaced or finished), so a callback that asks for the same slice twice
reads it once and a run rewritten on disk is never served stale. Slices come back as read-only numpy arrays:
callers share them, so nobody may modify one in place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ssmlens.dashboards.memo import Memo, memo
from ssmlens.interp.hook_names import hook_layer, hook_suffix
from ssmlens.interp.store import (
    CorruptRunError, IncompleteRunError, MissingEntryError, NotARunError, RunNotFoundError,
    StoreError, open_run,
)


class RunAccessError(Exception):
    """A run id that cannot be shown; the message is written for the user."""


@dataclass(frozen=True)
class Example:
    """One example of a run's task batch: tokens ``[pos]`` and role -> positions."""

    tokens: np.ndarray  # int64 [pos]
    roles: dict[str, list[int]]  # role -> positions in this example (padding dropped)
    loss_mask: np.ndarray  # bool [pos]

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[0])

    def role_of(self) -> list[str]:
        """Per position, the role that names it ("" for none); key/value/query/answer win
        over the derived roles (queried_key, last, noise) because they are what a user looks for."""
        out = [""] * self.seq_len
        order = ["noise", "last", "queried_value", "queried_key", "value", "key", "answer", "query"]
        for role in sorted(self.roles, key=lambda r: order.index(r) if r in order else -1):
            for p in self.roles[role]:
                if 0 <= p < self.seq_len:
                    out[p] = role
        return out


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    a.flags.writeable = False
    return a


# ---- memoized reads, keyed by (root, run_id, mtime) --------------------------------------------
# mtime is not used inside the functions: it is part of the key so that a rewritten run is re-read.


@memo(64)
def _open(url: str, mtime: int):
    return open_run(url)


@memo(64)
def _hook_index(url: str, mtime: int) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    cache = _open(url, mtime).cache
    return {name: (tuple(cache[name].shape), tuple(cache[name].dims)) for name in cache}


@memo(512)
def _hook_example(url: str, mtime: int, hook: str, example: int) -> np.ndarray:
    return _readonly(_open(url, mtime).cache[hook].numpy(example).astype(np.float32, copy=False))


@memo(16)
def _batch(url: str, mtime: int):
    return _open(url, mtime).batch()  # small (tokens, mask, roles): read once, sliced per example


@memo(256)
def _example(url: str, mtime: int, example: int) -> Example:
    batch = _batch(url, mtime)
    tokens = batch.tokens[example].numpy()
    roles = {}
    for role, pos in batch.roles.items():
        row = [int(p) for p in pos[example].tolist() if int(p) >= 0]
        if row:
            roles[role] = row
    return Example(_readonly(tokens), roles, _readonly(batch.loss_mask[example].numpy()))


@memo(64)
def _batch_size(url: str, mtime: int) -> tuple[int, int, str]:
    batch = _batch(url, mtime)
    return len(batch), batch.seq_len, batch.task


@memo(64)
def _listing(url: str, mtime: int, what: str) -> tuple[str, ...]:
    run = _open(url, mtime)
    return tuple(run.results() if what == "results" else run.tables())


@memo(256)
def _result_info(url: str, mtime: int, name: str) -> tuple[tuple[str, ...], tuple[int, ...], dict]:
    """(dims, shape, coords) of a result from its metadata alone (the layout of
    ``ssmlens.interp.store.layout``), so that menus can be built without reading values."""
    import zarr

    from ssmlens.interp.store import layout as L

    array = zarr.open_array(url, path=f"{L.RESULTS}/{L.escape_path(name)}", mode="r")
    dims = tuple(array.metadata.dimension_names or (f"dim_{i}" for i in range(array.ndim)))
    return dims, tuple(array.shape), dict(array.attrs.get(L.COORDS_ATTR) or {})


@memo(256)
def _result(url: str, mtime: int, name: str):
    return _open(url, mtime).result(name)


@memo(64)
def _table(url: str, mtime: int, name: str):
    return _open(url, mtime).table(name)


@memo(64)
def _a_matrix(weights: str, mtime: int, layer: int) -> np.ndarray:
    """A = −exp(A_log) ``[d_inner, d_state]`` of one layer, read with safetensors only."""
    from safetensors import safe_open

    key = f"blocks.{layer}.mixer.A_log"
    try:
        with safe_open(weights, framework="numpy") as f:
            if key not in f.keys():
                raise RunAccessError(f"the checkpoint {weights} has no {key}")
            a_log = f.get_tensor(key)
    except RunAccessError:
        raise
    except Exception as e:  # a bf16 checkpoint (numpy has no bf16) or a damaged file
        try:
            with safe_open(weights, framework="pt") as f:
                a_log = f.get_tensor(key).float().numpy()
        except Exception:
            raise RunAccessError(f"cannot read {key} from {weights}: {type(e).__name__}: {e}") from None
    return _readonly(-np.exp(a_log.astype(np.float64)))


_derived = Memo(128)  # values computed from a run's arrays (implicit attention, PCA)


def clear_caches() -> None:
    """Forget every memoized read (tests, and the runs page's refresh button)."""
    for f in (_open, _hook_index, _hook_example, _batch, _example, _batch_size, _listing, _result_info, _result,
              _table, _a_matrix):
        f.cache_clear()
    _derived.clear()


# ---- the reader --------------------------------------------------------------------------------


class Reader:
    """Validated, memoized read access to the runs under ``runs_dir``."""

    def __init__(self, runs_dir: str | os.PathLike) -> None:
        self.runs_dir = Path(runs_dir).expanduser()
        self.root = self.runs_dir.resolve()

    # -- run ids ------------------------------------------------------------------------------

    def resolve(self, run_id: Any) -> Path:
        """The directory of ``run_id`` inside the runs directory, or RunAccessError."""
        if not isinstance(run_id, str) or not run_id.strip():
            raise RunAccessError("no run selected: pick one on the Runs page")
        shown = run_id if len(run_id) <= 120 else run_id[:117] + "..."
        if "\x00" in run_id or "\\" in run_id or "://" in run_id:
            raise RunAccessError(f"refused run id {shown!r}: a run id is a plain path relative to the runs directory")
        rel = PurePosixPath(run_id)
        if rel.is_absolute() or run_id.startswith("~"):
            raise RunAccessError(f"refused run id {shown!r}: absolute paths are not accepted, "
                                 "only paths relative to the runs directory")
        if ".." in rel.parts:
            raise RunAccessError(f"refused run id {shown!r}: '..' may not appear in a run id")
        path = (self.root / rel).resolve()
        if path != self.root and not path.is_relative_to(self.root):
            raise RunAccessError(f"refused run id {shown!r}: it leads outside the runs directory "
                                 "(through a symbolic link)")
        if not path.exists():
            raise RunAccessError(f"no run {shown!r} under {self.runs_dir}")
        if not (path / "zarr.json").is_file():
            raise RunAccessError(f"{shown!r} is not a run store (no zarr.json): pick a run on the Runs page")
        return path

    def _key(self, run_id: str) -> tuple[str, int]:
        path = self.resolve(run_id)
        try:
            mtime = (path / "zarr.json").stat().st_mtime_ns
        except OSError as e:
            raise RunAccessError(f"cannot read run {run_id!r}: {e}") from None
        return str(path), mtime

    def _call(self, run_id: str, what: str, fn, *args):
        """``fn(url, mtime, *args)`` with store errors turned into RunAccessError."""
        url, mtime = self._key(run_id)
        try:
            return fn(url, mtime, *args)
        except RunAccessError:
            raise
        except IncompleteRunError as e:
            raise RunAccessError(
                f"run {run_id!r} is incomplete: its writer stopped before finishing, so it is listed "
                f"on the Runs page but not opened ({str(e).split(' Its writer recorded: ')[-1][:300]})"
            ) from None
        except NotARunError:
            raise RunAccessError(f"{run_id!r} is not an ssmlens run store") from None
        except CorruptRunError as e:
            raise RunAccessError(f"run {run_id!r} is damaged and cannot be read: {e}") from None
        except RunNotFoundError:
            raise RunAccessError(f"no run {run_id!r} under {self.runs_dir}") from None
        except MissingEntryError as e:
            raise RunAccessError(f"run {run_id!r} has no {what}: {e}") from None
        except StoreError as e:
            raise RunAccessError(f"cannot read {what} of run {run_id!r}: {e}") from None

    # -- run level ----------------------------------------------------------------------------

    def open(self, run_id: str):
        """The ``ssmlens.interp.store.Run`` (complete runs only)."""
        return self._call(run_id, "metadata", _open)

    def config(self, run_id: str) -> dict:
        return dict(self.open(run_id).config or {})

    def metrics(self, run_id: str) -> dict:
        return dict(self.open(run_id).metrics or {})

    def batch_shape(self, run_id: str) -> tuple[int, int, str]:
        """(examples, seq_len, task) of the run's batch."""
        return self._call(run_id, "task batch", _batch_size)

    def example(self, run_id: str, example: int) -> Example:
        n, _, _ = self.batch_shape(run_id)
        example = self.check_example(example, n)
        return self._call(run_id, "task batch", _example, example)

    @staticmethod
    def check_example(example: Any, n: int) -> int:
        try:
            i = int(example)
        except (TypeError, ValueError):
            raise RunAccessError(f"example {example!r} is not a number") from None
        if not 0 <= i < n:
            raise RunAccessError(f"example {i} is out of range: the batch has {n} examples")
        return i

    # -- cache ----------------------------------------------------------------------------------

    def hooks(self, run_id: str) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
        """Cached hook name -> (shape, dims)."""
        return self._call(run_id, "cache", _hook_index)

    def layers_with(self, run_id: str, suffix: str) -> list[int]:
        """Layers whose ``blocks.{l}.<suffix>`` is cached, ascending."""
        return sorted(hook_layer(n) for n in self.hooks(run_id)
                      if hook_suffix(n) == suffix and hook_layer(n) is not None)

    def has(self, run_id: str, suffix: str) -> bool:
        return bool(self.layers_with(run_id, suffix))

    def hook(self, run_id: str, name: str, example: int) -> np.ndarray:
        """One example of a cached hook as float32 (the batch axis removed); read-only."""
        index = self.hooks(run_id)
        if name not in index:
            raise RunAccessError(f"run {run_id!r} did not cache {name}")
        example = self.check_example(example, index[name][0][0])
        return self._call(run_id, name, _hook_example, name, example)

    def layer_hook(self, run_id: str, suffix: str, layer: int, example: int) -> np.ndarray:
        return self.hook(run_id, f"blocks.{int(layer)}.{suffix}", example)

    # -- results and tables ---------------------------------------------------------------------

    def results(self, run_id: str) -> list[str]:
        return list(self._call(run_id, "results", _listing, "results"))

    def result(self, run_id: str, name: str):
        """A labelled result (``xarray.DataArray``); shared, so never modify it."""
        return self._call(run_id, f"result {name!r}", _result, name)

    def result_info(self, run_id: str, name: str) -> tuple[tuple[str, ...], tuple[int, ...], dict]:
        """(dims, shape, coords) of a result without reading its values."""
        if name not in self.results(run_id):
            raise RunAccessError(f"run {run_id!r} has no result {name!r}")
        try:
            return self._call(run_id, f"result {name!r}", _result_info, name)
        except RunAccessError:
            raise
        except Exception as e:  # zarr's own errors for a damaged array
            raise RunAccessError(f"cannot read result {name!r} of run {run_id!r}: {type(e).__name__}: {e}") from None

    def tables(self, run_id: str) -> list[str]:
        return list(self._call(run_id, "tables", _listing, "tables"))

    def table(self, run_id: str, name: str):
        return self._call(run_id, f"table {name!r}", _table, name)

    def derived(self, run_id: str, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` memoized under ``(run, mtime, key)``: for values derived from a
        run's arrays (they change exactly when the run does)."""
        url, mtime = self._key(run_id)
        return _derived.get((url, mtime, *key), compute)

    # -- checkpoint -----------------------------------------------------------------------------

    def weights_path(self, run_id: str) -> Path:
        """The run's ``model.safetensors`` (from the ``checkpoint`` run attribute), which
        must lie inside the runs directory, as run ids must: a relative path is read
        against the runs directory, then against its parent (``ssmlens demo`` records
        ``runs/...`` from the directory above ``runs/``); an absolute one must point
        inside. Any other (``/etc/passwd``, ``../x``, a symbolic link leading out) is
        refused with a RunAccessError before a byte of it is read."""
        ckpt = self.open(run_id).checkpoint
        path = ckpt.get("path") if isinstance(ckpt, dict) else ckpt
        if not path:
            raise RunAccessError(f"run {run_id!r} records no checkpoint, so A (and the memory "
                                 "horizon 1/(Δ·|A|)) is unavailable")
        text = str(path)
        shown = text if len(text) <= 120 else text[:117] + "..."
        p = PurePosixPath(text)
        if "\x00" in text or "://" in text or text.startswith("~"):
            raise RunAccessError(f"refused checkpoint {shown!r} of run {run_id!r}: only a file inside the runs "
                                 f"directory {self.runs_dir} is read, so A is unavailable")
        candidates = [Path(p)] if p.is_absolute() else [self.root / p, self.root.parent / p]
        inside = [c.resolve() for c in candidates if self._inside(c.resolve())]
        if not inside:
            raise RunAccessError(f"refused checkpoint {shown!r} of run {run_id!r}: it lies outside the runs "
                                 f"directory {self.runs_dir} (only files inside it are read), so A is unavailable")
        found = next((c for c in inside if c.exists()), inside[0])
        if found.is_dir():
            found = found / "model.safetensors"
        if not found.is_file():
            raise RunAccessError(f"the checkpoint of run {run_id!r} ({shown}) is missing, so A is unavailable")
        return found

    def _inside(self, path: Path) -> bool:
        return path == self.root or path.is_relative_to(self.root)

    def a_matrix(self, run_id: str, layer: int) -> np.ndarray:
        """Mamba's A = −exp(A_log) ``[d_inner, d_state]`` of one layer, float64."""
        p = self.weights_path(run_id)
        return _a_matrix(str(p), p.stat().st_mtime_ns, int(layer))
