"""The engine flags every study command shares: ``--engine``, ``--address``,
``--gpus-per-task``, ``--retries``; ``engine_options(args)`` turns them into
``run_cells`` keyword arguments."""

from __future__ import annotations

import argparse


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution (where the study's cells run)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: every cell in this process, one after another (default); "
                        "ray: each cell a Ray task, side by side")
    g.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="Ray cluster to join: auto (this machine's cluster or RAY_ADDRESS) or the head's "
                        "HOST:PORT; default: start a local Ray on this machine")
    g.add_argument("--gpus-per-task", type=_share, default=None, dest="gpus_per_task", metavar="N",
                   help="GPUs each cell asks Ray for, e.g. 0.25 puts four cells on one GPU "
                        "(default: 1 for cells on a GPU device, 0 on the CPU)")
    g.add_argument("--retries", type=_count, default=1,
                   help="times a failed cell is run again before it is recorded as failed (default: 1)")


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GPUs such as 0.25 or 1, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def engine_options(args: argparse.Namespace) -> dict:
    """``run_cells`` keyword arguments from the parsed flags (absent flags: defaults)."""
    engine = getattr(args, "engine", "local")
    if engine != "ray" and (getattr(args, "address", None) or getattr(args, "gpus_per_task", None) is not None):
        raise ValueError("--address and --gpus-per-task apply to --engine ray only")
    return {"engine": engine, "address": getattr(args, "address", None),
            "gpus_per_task": getattr(args, "gpus_per_task", None), "retries": getattr(args, "retries", 1)}


def start_engine(options: dict) -> None:
    """Join (or start) the Ray cluster of ``--engine ray`` before anything is written, so
    that a wrong ``--address`` fails with EngineError and leaves no run behind."""
    if options.get("engine") == "ray":
        from ssmlens.interp.engines.ray_engine import connect

        connect(options.get("address"))
