"""ssmlens: a mechanistic-interpretability workbench for Mamba, Transformers and B'MOJO.

This folder holds only the top of the one import namespace, ``ssmlens``. Its
subpackages are the repository's top-level folders beside it (pyproject.toml maps
them with setuptools' ``package-dir``): ``ssmlens.interp`` (hooks, tasks, training,
run store, CLI), ``ssmlens.models``, ``ssmlens.kernels``, ``ssmlens.probes`` and
``ssmlens.dashboards``. ``import ssmlens`` itself is light; the names below are
imported on first use, so ``import ssmlens.kernels`` never pulls in the models.
"""

from __future__ import annotations

import importlib
import os

# An installed wheel has the subpackages inside this folder. In a source checkout they
# are its siblings: let imports find them there too (an editable install's finder maps
# them as well; this covers a checkout on sys.path without it).
_here = os.path.dirname(os.path.realpath(__file__))
if not os.path.isdir(os.path.join(_here, "interp")):
    __path__.append(os.path.dirname(_here))  # noqa: F821 (the package's own __path__)

__version__ = "0.2.0"

SUBPACKAGES = ("interp", "models", "kernels", "probes", "dashboards")

# name a notebook wants first -> the module that defines it
_LAZY = {
    "load_model": "ssmlens.models.loader",
    "save_model": "ssmlens.models",
    "build_model": "ssmlens.models",
    "Mamba": "ssmlens.models",
    "Mamba2": "ssmlens.models",
    "Transformer": "ssmlens.models",
    "BMojo": "ssmlens.models",
    "MoEMamba": "ssmlens.models",
    "Based": "ssmlens.models",
    "H3": "ssmlens.models",
    "Hyena": "ssmlens.models",
    "selective_scan": "ssmlens.kernels",
    "make_task": "ssmlens.interp.tasks",
    "create_run": "ssmlens.interp.store",
    "open_run": "ssmlens.interp.store",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in SUBPACKAGES:
        return importlib.import_module(f"ssmlens.{name}")
    raise AttributeError(f"module 'ssmlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *SUBPACKAGES])
