"""Open the zarr group at a path or fsspec URL, turning zarr's failures into clear errors.

Local paths (and ``file://`` URLs without storage options) use zarr's ``LocalStore``,
whose writes are atomic (temporary file + rename), so a killed writer never leaves a
half-written ``zarr.json``. Every other URL (``memory://``, ``s3://``, ``gs://`` ...)
goes through zarr's own store-from-URL mechanism, ``zarr.open_group(url,
storage_options=...)``, which builds an ``FsspecStore``: the same code runs on both.
"""

from __future__ import annotations

import json
import os
from typing import Any

import fsspec
import zarr
from zarr.errors import ContainsArrayError, GroupNotFoundError

from interp.store.errors import CorruptRunError, NotARunError, RunNotFoundError, StoreError
from interp.store.layout import FORMAT_ATTR, FORMAT_VERSION

UrlLike = str | os.PathLike


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
