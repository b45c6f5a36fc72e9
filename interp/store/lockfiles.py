"""The files of a run's lock, on a local disk or at an fsspec URL (``lock``).

Both offer the same few operations: make the run's folder (and remove it again if
nothing was written), create a file exclusively, read, remove, list the run's entries
and delete one. See ``lock``'s docstring for what makes each create exclusive.
"""

from __future__ import annotations

import os
import shutil
import uuid

import fsspec


class _LocalFiles:
    """Lock files in a local directory."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._made: list[str] = []  # folders make_root made, deepest first

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def make_root(self) -> bool:
        """Make the run's directory (and missing parents); whether any was made here
        (then ``drop_root`` removes them again, if they are still empty)."""
        self._made = []
        probe = self.root
        while not os.path.lexists(probe) and probe != os.path.dirname(probe):
            self._made.append(probe)
            probe = os.path.dirname(probe)
        for folder in list(reversed(self._made)):
            try:
                os.mkdir(folder)
            except FileExistsError:  # made by another writer meanwhile
                self._made.remove(folder)
        if not os.path.isdir(self.root):
            raise NotADirectoryError(20, "Not a directory", self.root)
        return bool(self._made)

    def drop_root(self) -> None:
        for folder in self._made:  # deepest first
            try:
                os.rmdir(folder)  # only if empty
            except OSError:
                break

    def create(self, name: str, data: bytes) -> bool:
        """Create ``name`` holding ``data`` unless it exists; whether this call created it."""
        path = self.path(name)
        tmp = self.path(f".{name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "xb") as f:
            f.write(data)
        try:
            os.link(tmp, path)  # atomic, fails if the name exists; the lock appears whole
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some FUSE / SMB mounts): an exclusive open
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        finally:
            os.unlink(tmp)

    def read(self, name: str) -> bytes | None:
        try:
            with open(self.path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    def entries(self) -> list[str]:
        try:
            return sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []

    def remove_entry(self, name: str) -> None:
        path = self.path(name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


class _FsspecFiles:
    """Lock files at an fsspec URL (object stores have no directories to make)."""

    def __init__(self, url: str, storage_options: dict | None) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = self.root.rstrip("/")

    def path(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    def _p(self, name: str) -> str:
        return f"{self.root}/{name}"

    def make_root(self) -> bool:
        made = not self.fs.exists(self.root)
        self.fs.makedirs(self.root, exist_ok=True)
        return made

    def drop_root(self) -> None:
        try:
            if not self.fs.ls(self.root):
                self.fs.rmdir(self.root)
        except Exception:
            pass

    def create(self, name: str, data: bytes) -> bool:
        path = self._p(name)
        try:
            with self.fs.open(path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):  # no exclusive mode: best effort
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data)
            return self.read(name) == data

    def read(self, name: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._p(name))
        except FileNotFoundError:
            return None

    def remove(self, name: str) -> None:
        try:
            self.fs.rm_file(self._p(name))
        except FileNotFoundError:
            pass

    def entries(self) -> list[str]:
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False))
        except FileNotFoundError:
            return []

    def remove_entry(self, name: str) -> None:
        self.fs.rm(self._p(name), recursive=True)


def lock_files(url: str, storage_options: dict | None = None) -> _LocalFiles | _FsspecFiles:
    """The lock files of the run at ``url`` (a ``normalize``-d path or URL)."""
    return _FsspecFiles(url, storage_options) if "://" in url else _LocalFiles(url)
