"""``ssmlens`` command line. Each subcommand lives in its own module of this package
and defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
modules are discovered, so adding a command means adding a file.

Heavy imports (torch, zarr, dash) happen inside ``run`` so ``ssmlens --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in _commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
