"""Errors of the run store: each names the run (or path) it is about and says what to do.

Every failure inside zarr, fsspec or json that a user can provoke with a bad path or a
damaged store is caught and re-raised as one of these, so that a caller sees
"no run at /x" instead of a traceback from zarr internals. The original exception
stays available as ``err.original`` for debugging.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every run-store error."""

    def __init__(self, message: str, *, original: BaseException | None = None) -> None:
        super().__init__(message)
        self.original = original

    def __str__(self) -> str:  # KeyError subclasses would otherwise repr() the message
        return str(self.args[0])


class RunNotFoundError(StoreError, FileNotFoundError):
    """Nothing exists at the given path or URL."""


class NotARunError(StoreError, ValueError):
    """Something exists at the path, but it is not an ssmlens run (a foreign zarr node,
    a plain directory, a zarr array)."""


class CorruptRunError(StoreError):
    """An ssmlens run (or what looks like one) whose metadata cannot be read."""


class IncompleteRunError(StoreError):
    """The run's writer never reached ``finish()``: it crashed, was killed, or is still
    running. Its data may be partial; ``open_run(url, require_complete=False)`` reads it."""


class RunExistsError(StoreError, FileExistsError):
    """``create_run`` found a run (or foreign data) where it was asked to write."""


class RunLockedError(RunExistsError):
    """Another writer holds the run (one writer per run): ``create_run`` found its lock,
    or a writer found that its own lock was taken. ``holder`` names that writer (host,
    pid, start time) when the lock says; ``lock_path`` is the lock file."""

    def __init__(self, message: str, *, holder=None, lock_path: str | None = None,
                 original: BaseException | None = None) -> None:
        super().__init__(message, original=original)
        self.holder = holder
        self.lock_path = lock_path


class UnwritableRunError(StoreError):
    """No run can be made at the path: a file is in the way, a folder cannot be made
    there, or writing is not permitted."""


class StaleLockWarning(UserWarning):
    """``create_run(overwrite=True)`` took over the lock of a writer that is gone."""


class MissingEntryError(StoreError, KeyError):
    """A run has no entry (batch, result, table) of that name."""


class RunClosedError(StoreError, RuntimeError):
    """A write to a RunWriter after ``finish()`` or after it was aborted."""
