"""Helpers of tests/test_engines*.py that Ray workers and coordinator subprocesses import
(the tests put this folder on their PYTHONPATH): slow and stalling ablations, a small
study, cell functions that fail on purpose."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ssmlens.probes.ablation import Ablation, parse_ablation
from ssmlens.probes.ablation_study import AblationStudy

ABLATIONS = ["no_conv", "clamp_delta", "freeze_delta", "zero:blocks.1.hook_resid_pre@query",
             "zero:blocks.0.hook_resid_post@queried_value"]


class Slow(Ablation):
    """``inner`` after a pause: the same values, slow enough to stop a study mid-way."""

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds = parse_ablation(inner), seconds

    @property
    def label(self) -> str:
        return self.inner.label

    def bind(self, model, batch=None):
        time.sleep(self.seconds)
        return self.inner.bind(model, batch)


class Stall(Ablation):
    """``inner``, but the first attempt (no marker in ``where`` yet) writes its pid to
    ``where/<label>.pid`` and hangs until it is killed; later attempts record their pid
    in ``<label>.done`` and run normally."""

    def __init__(self, inner, where: str):
        self.inner, self.where = parse_ablation(inner), where

    @property
    def label(self) -> str:
        return self.inner.label

    def bind(self, model, batch=None):
        name = self.label.replace(":", "_").replace("@", "_")
        marker = Path(self.where) / f"{name}.pid"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(300)
        (Path(self.where) / f"{name}.done").write_text(str(os.getpid()))
        return self.inner.bind(model, batch)


def study(ablations=ABLATIONS, name: str = "engines") -> AblationStudy:
    """2 fresh tiny models × 1 AR task × ``ablations`` (+ baseline); every cell applies
    to Mamba, the zero ablations to both."""
    return AblationStudy(
        models=[{"name": "mamba", "model": "mamba", "config": {"d_model": 16, "n_layers": 2, "d_state": 4}},
                {"name": "transformer", "model": "transformer", "config": {"d_model": 16, "n_layers": 2,
                                                                              "n_heads": 2}}],
        tasks=[{"name": "ar", "config": {"n_keys": 8, "n_values": 8, "n_pairs": 4}, "n": 16, "seed": 3}],
        ablations=list(ablations), batch_size=8, name=name)


def slow_mamba_study(seconds: float) -> AblationStudy:
    """Only the Mamba and only ablations that apply to it (no skipped cells), each slow."""
    s = study([Slow(a, seconds) for a in ABLATIONS])
    s.models = s.models[:1]
    return s


# ---- cell functions ----------------------------------------------------------------


def double(x: int) -> int:
    return 2 * x


def fail_until(path: str, failures: int) -> str:
    """Raises the first ``failures`` times (counted in the file at ``path``), then returns."""
    p = Path(path)
    n = int(p.read_text()) if p.exists() else 0
    p.write_text(str(n + 1))
    if n < failures:
        raise ValueError(f"planned failure {n + 1}\nsecond line")
    return f"ok after {n}"


def main(argv: list[str]) -> None:
    """``main([OUT, ENGINE, ADDRESS?])``: the slow study into OUT (the coordinator that the
    tests kill runs ``python -c "import engines_helpers; engines_helpers.main(...)"``)."""
    from ssmlens.probes.ablation_study import run_study

    out, engine = argv[0], argv[1]
    options = {"engine": engine, "address": argv[2] if len(argv) > 2 else None}
    run_study(slow_mamba_study(0.4), out, progress=False, engine=options)
