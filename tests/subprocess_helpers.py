"""Running Python in a child process that imports the same ``ssmlens`` as the tests."""

import os
import sys
from pathlib import Path

import ssmlens


def child_env(**extra: str) -> dict[str, str]:
    """``os.environ`` with the folder that holds the imported ``ssmlens`` first on
    PYTHONPATH: a child sees the code under test (a worktree's shim, an install), not
    whatever ``ssmlens`` its own path would find first."""
    home = str(Path(ssmlens.__file__).parent.parent)  # .shim/, site-packages/, ...
    paths = [home, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), **extra}


def python() -> list[str]:
    """The interpreter running the tests; ``-P``: no script folder on sys.path (the
    repository root's ``kernels/`` would shadow Hugging Face's ``kernels``)."""
    return [sys.executable, "-P"] if sys.version_info >= (3, 11) else [sys.executable]
