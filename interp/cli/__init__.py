"""``ssmlens`` command line. Each subcommand lives in its own module of this package
and defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
modules are discovered, so adding a command means adding a file.

Heavy imports (torch, zarr, dash) happen inside ``run`` so ``ssmlens --help`` is fast.

Errors: one path for every command (``main``). A known error becomes one line on
stderr, ``ssmlens <command>: error: <message>`` (the message names the problem and
the path), and an exit code: 2 for usage errors (what was typed cannot work: an
unknown hook, role, model, task or config field, an input that does not exist, an
output that cannot be made, a run already there without ``--overwrite``), 1 for
failures (a corrupt checkpoint or store, a run another process is writing, an I/O
error). Any other exception is a bug and keeps its traceback; ``--traceback`` shows
the traceback of known errors too.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


class UsageError(Exception):
    """What was typed cannot work (exit code 2); commands raise it with a message that
    names the argument and the path or value."""


def _commands() -> list:
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            mods.append(mod)
    return sorted(mods, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssmlens",
        description="Mechanistic interpretability workbench for Mamba, Transformers and B'MOJO.",
    )
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, show the full traceback instead of one line (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in _commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def exit_code(error: BaseException) -> int | None:
    """2 for a usage error, 1 for a failure, None for an exception that is a bug."""
    from ssmlens.interp.store.errors import (
        NotARunError, RunExistsError, RunLockedError, RunNotFoundError, StoreError, UnwritableRunError,
    )

    from ssmlens.interp.engines.cells import EngineError

    if isinstance(error, (UsageError, EngineError)):  # EngineError: engine flags / resources that cannot work
        return 2
    if isinstance(error, RunLockedError):  # another process writes it: not the user's typing
        return 1
    if isinstance(error, (RunExistsError, RunNotFoundError, NotARunError, UnwritableRunError)):
        return 2
    if isinstance(error, StoreError):  # corrupt or incomplete runs, unreachable stores
        return 1
    from ssmlens.interp.hook_names import UnknownHookError
    from ssmlens.interp.tasks.base import UnknownRoleError
    from ssmlens.models.checkpoint import CheckpointError

    if isinstance(error, CheckpointError):  # missing inputs are checked first (UsageError)
        return 1
    if isinstance(error, (UnknownHookError, UnknownRoleError, ValueError)):
        return 2  # ValueError: the library's bad-value errors (ConfigError, StudyError, ...)
    if isinstance(error, OSError):
        return 1
    return None


def one_line(error: BaseException) -> str:
    """The error's message on one line (OS errors: the reason and the path)."""
    if isinstance(error, OSError) and error.strerror:  # not the store's errors: they have no strerror
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        code = exit_code(e)
        if code is None or args.traceback:
            raise
        print(f"ssmlens {args.command}: error: {one_line(e)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
