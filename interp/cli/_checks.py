"""Checks that commands run on their arguments before any work: an input that does not
exist, an output that cannot be made. They raise ``UsageError`` (exit code 2) with one
line naming the argument and the path, and write nothing (a folder made to test a
path is removed again)."""

from __future__ import annotations

from pathlib import Path

from ssmlens.interp.cli import UsageError


def require_input(path, what: str) -> None:
    """UsageError unless the local ``path`` exists (URLs are left to their readers)."""
    if "://" not in str(path) and not Path(path).exists():
        raise UsageError(f"{what} not found: {path}")


def require_dir(path, flag: str) -> None:
    """UsageError unless ``path`` is an existing directory (a folder to read from)."""
    require_input(path, f"{flag} directory")
    if not Path(path).is_dir():
        raise UsageError(f"{flag} {path} is a file, not a directory")


def writable_dir(path, flag: str) -> None:
    """UsageError unless a directory can be made (or written) at the local ``path``;
    ``flag`` says which argument gave it."""
    from ssmlens.interp.store.location import dir_problem

    if "://" in str(path):
        return
    problem = dir_problem(str(Path(path).expanduser().absolute()))
    if problem is not None:
        raise UsageError(f"{flag} {path}: cannot write there: {problem}")


def writable_run(url, overwrite: bool, flag: str = "--out") -> None:
    """UsageError unless ``create_run(url, overwrite=overwrite)`` can take the path: a
    file in the way, no permission, a run already there without ``--overwrite``.
    A run that another process is writing raises RunLockedError (a failure, code 1)."""
    from ssmlens.interp.store import RunExistsError, RunLockedError, UnwritableRunError, check_creatable

    try:
        check_creatable(url, overwrite=overwrite)
    except RunLockedError:
        raise
    except (RunExistsError, UnwritableRunError) as e:
        raise UsageError(f"{flag}: {str(e).replace('pass overwrite=True', 'pass --overwrite')}") from None
