"""Open the zarr group at a path or fsspec URL, turning zarr's failures into clear errors.

Local paths (and ``file://`` URLs without storage options) use zarr's ``LocalStore``,
whose writes are atomic (temporary file + rename), so a killed writer never leaves a
half-written ``zarr.json`` (a writer uses ``ReservingLocalStore``, the same store
with cheaper large writes). Every other URL (``memory://``, ``s3://``, ``gs://`` ...)
goes through zarr's own store-from-URL mechanism, ``zarr.open_group(url,
storage_options=...)``, which builds an ``FsspecStore``: the same code runs on both.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import fsspec
import zarr
from zarr.errors import ContainsArrayError, GroupNotFoundError, ZarrUserWarning

from ssmlens.interp.store.errors import CorruptRunError, NotARunError, RunNotFoundError, StoreError
from ssmlens.interp.store.layout import FORMAT_ATTR, FORMAT_VERSION
from ssmlens.interp.store.localfs import ReservingLocalStore

UrlLike = str | os.PathLike

_ORPHAN_CHUNKS = "Object at .* is not recognized as a component of a Zarr hierarchy"


def ignore_orphan_chunks() -> None:
    """Silence zarr's warning about keys that are no node of the hierarchy.

    A writer stopped inside ``write_cache`` leaves chunk files that no zarr.json names
    (an array's metadata is written after its data, so it is never seen half
    written); zarr's listing skips them, and says so with this warning, which is noise
    for a run. Re-installed on every open: ``warnings.catch_warnings`` blocks (pytest
    runs each test in one) drop filters added inside them.
    """
    for action, message, category, _, _ in warnings.filters:
        pattern = getattr(message, "pattern", None)
        if action == "ignore" and category is ZarrUserWarning and pattern == _ORPHAN_CHUNKS:
            return
    warnings.filterwarnings("ignore", message=_ORPHAN_CHUNKS, category=ZarrUserWarning)


def normalize(url: UrlLike, storage_options: dict | None = None) -> str:
    """The string handed to zarr: local paths made absolute, ``file://`` made local."""
    url = os.fspath(url)
    if url.startswith("file://") and not storage_options:
        url = url.removeprefix("file://")
    if "://" not in url:
        url = os.path.abspath(os.path.expanduser(url))
    return url


def _fs(url: str, storage_options: dict | None) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def _exists(url: str, storage_options: dict | None, key: str = "") -> bool:
    """Whether ``url/key`` exists; a directory counts only if it holds something."""
    try:
        fs, path = _fs(url, storage_options)
        path = f"{path.rstrip('/')}/{key}" if key else path
        if not fs.exists(path):
            return False
        return not fs.isdir(path) or bool(fs.ls(path))
    except Exception:  # an unreachable store cannot be diagnosed further
        return False


def open_group(url: str, mode: str, storage_options: dict | None = None) -> zarr.Group:
    """Open an existing zarr v3 group; raise RunNotFoundError / NotARunError / CorruptRunError.

    The caller checks the ssmlens marker (``check_marker``); this only deals with
    "is there a readable zarr group here at all".
    """
    ignore_orphan_chunks()
    if "://" in url:
        try:  # an unknown protocol or a missing fsspec backend (s3fs, gcsfs): say so first
            _fs(url, storage_options)
        except (ImportError, ValueError) as e:
            raise StoreError(f"cannot open {url}: {e}", original=e) from None
    try:
        return zarr.open_group(url, mode=mode, storage_options=storage_options or None)
    except ContainsArrayError as e:
        raise NotARunError(f"{url} is a zarr array, not a run (a run is a zarr group)", original=e) from None
    except (GroupNotFoundError, FileNotFoundError) as e:
        if _exists(url, storage_options, "zarr.json"):
            raise CorruptRunError(
                f"{url}/zarr.json exists but is not valid zarr group metadata ({e}); the run is damaged",
                original=e,
            ) from None
        if _exists(url, storage_options):
            raise NotARunError(
                f"{url} exists but is not a zarr group (no zarr.json): not an ssmlens run", original=e
            ) from None
        raise RunNotFoundError(f"no run at {url}: the path does not exist", original=e) from None
    except (json.JSONDecodeError, ValueError, TypeError, KeyError) as e:
        raise CorruptRunError(
            f"cannot read the metadata of {url}: {type(e).__name__}: {e}", original=e
        ) from None


def os_reason(path: str, e: OSError) -> str:
    """Why making or writing ``path`` failed with ``e``, in a few words: the file in the
    way if that is the problem, else the OS's reason and the path it names."""
    if "://" not in path:
        probe = path
        while probe != os.path.dirname(probe) and not os.path.lexists(probe):
            probe = os.path.dirname(probe)
        if os.path.lexists(probe) and not os.path.isdir(probe):
            return f"{probe} is a file, not a directory"
    return f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)


def dir_problem(path: str) -> str | None:
    """Why no directory can be made (or written) at the local ``path``, or None. An
    existing directory is asked (``os.access``); missing folders are made and removed
    again (what some filesystems refuse shows only then), so nothing is left behind."""
    made = []
    try:
        if os.path.isdir(path):
            return None if os.access(path, os.W_OK | os.X_OK) else f"no permission to write in {path}"
        probe = path
        while not os.path.lexists(probe):
            made.append(probe)
            probe = os.path.dirname(probe)
        for folder in reversed(made):
            os.mkdir(folder)
        if not made:  # ``path`` exists and is not a directory
            return os_reason(path, NotADirectoryError(20, "Not a directory", path))
        return None
    except OSError as e:
        return os_reason(path, e)
    finally:
        for folder in made:
            try:
                os.rmdir(folder)
            except OSError:
                pass


def store_for_writing(url: str) -> str | ReservingLocalStore:
    """What ``zarr.open_group`` gets to write a run: a ``ReservingLocalStore`` for a
    local path (``normalize``-d), the URL itself otherwise (zarr makes its store)."""
    return url if "://" in url else ReservingLocalStore(url)


def check_marker(url: str, attrs: dict[str, Any]) -> int:
    """The run's format version; NotARunError for a foreign group."""
    version = attrs.get(FORMAT_ATTR)
    if version is None:
        raise NotARunError(
            f"{url} is a zarr group but not an ssmlens run (it has no {FORMAT_ATTR!r} "
            "attribute, so interp.store did not write it)"
        )
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CorruptRunError(
            f"{url} has {FORMAT_ATTR}={version!r}; this version of ssmlens reads formats "
            f"up to {FORMAT_VERSION} (upgrade ssmlens to read it)"
        )
    return version


def read_attrs(url: str, group: zarr.Group) -> dict[str, Any]:
    try:
        return dict(group.attrs.asdict())
    except Exception as e:  # attrs are parsed lazily by some stores
        raise CorruptRunError(f"cannot read the attributes of {url}: {e}", original=e) from None
