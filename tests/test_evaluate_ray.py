"""``ssmlens evaluate`` on a local Ray (2 CPUs, no GPU, started once for this module): a
small suite gives the local engine's numbers, and a worker SIGKILLed in the middle of a
cell's training is retried, resumes from the training's last checkpoint and ends with
the same model and numbers as the uninterrupted local run.

Models are compared by their tensors, not by the cells' fingerprints: those hash the
weights file, whose safetensors header lists its metadata in an order that can change
from one process to the next (same tensors, other bytes)."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from test_evaluate import TINY  # noqa: E402

from ssmlens.interp.cli import main  # noqa: E402
from ssmlens.interp.store import open_run  # noqa: E402
from ssmlens.probes.evaluation import cell as cell_module  # noqa: E402
from ssmlens.probes.evaluation import run_suite, suite_from_dict  # noqa: E402

TESTS = Path(__file__).resolve().parent
# two families; 300 training steps with checkpoints on the way, so a killed training resumes mid-way
SUITE = {**TINY, "models": [TINY["models"][0], TINY["models"][5]],  # transformer, hyena
         "train": {**TINY["train"], "steps": 300, "checkpoint_every": 25, "eval_every": 100}}
KILLED = "hyena-w16-lr0.003-s0"
SAME = ("acc", "loss", "train_steps", "train_eval_acc", "iia_value_L1", "assoc_queried_value",
        "acc_no_conv", "diag_median_horizon")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray whose workers import ssmlens and tests/evaluate_helpers (PYTHONPATH is inherited)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS)] + ([old] if old else []))
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def write_suite(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    return path


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The local engine's run of SUITE (the reference)."""
    out = tmp_path_factory.mktemp("local") / "out"
    run_suite(suite_from_dict(SUITE), out, progress=False)
    return out


def rows(out: Path) -> dict:
    return {k.name: dict(open_run(k).metrics) for k in sorted((out / "cells").iterdir())}


def weights(out: Path, key: str) -> dict:
    from safetensors.torch import load_file

    (final,) = (out / "models").glob(f"{key}-*/final/model.safetensors")
    return load_file(final)


def assert_same(a: Path, b: Path) -> None:
    """Same trained weights and the same numbers, bit for bit (NaN where the other has NaN:
    a test the model could not take), in every cell of the suites run into ``a`` and ``b``."""
    import torch

    rows_a, rows_b = rows(a), rows(b)
    assert sorted(rows_a) == sorted(rows_b) and len(rows_a) == len(SUITE["models"])
    for key in rows_a:
        wa, wb = weights(a, key), weights(b, key)
        assert sorted(wa) == sorted(wb) and all(torch.equal(wa[n], wb[n]) for n in wa), key
        for metric in SAME:
            x, y = rows_a[key].get(metric), rows_b[key].get(metric)
            assert x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)), \
                (key, metric, x, y)


def test_suite_on_ray_equals_the_local_engine(cluster, local, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["evaluate", str(write_suite(tmp_path)), "--out", str(out), "--engine", "ray", "--no-progress"]) == 0
    assert_same(local, out)
    printed = capsys.readouterr().out
    assert "Mechanism table" in printed and "| hyena | 16 |" in printed
    mechanism = [open_run(o / "suite").table("mechanism") for o in (local, out)]
    pd.testing.assert_frame_equal(*mechanism)


def test_a_worker_killed_mid_training_resumes_to_the_same_numbers(cluster, local, tmp_path, monkeypatch):
    import evaluate_helpers

    out = tmp_path / "out"
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / f"stall-{KILLED}").touch()  # its first attempt hangs after its first checkpoint
    killed: dict = {}

    def kill_mid_training():
        stalled = markers / f"{KILLED}.stalled"
        deadline = time.monotonic() + 180
        while not stalled.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int((markers / f"{KILLED}.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed.update(pid=pid, checkpoint=stalled.read_text())

    monkeypatch.setattr(cell_module, "cell_task", evaluate_helpers.pid_then_cell)
    killer = threading.Thread(target=kill_mid_training, daemon=True)
    killer.start()
    result = run_suite(suite_from_dict(SUITE), out, engine="ray", retries=1, progress=False)
    killer.join(5)
    assert 0 < int(killed["checkpoint"].removeprefix("step_")) < 300  # killed mid-training, after a checkpoint
    assert int((markers / f"{KILLED}.again").read_text()) != killed["pid"]  # another worker finished it
    assert not result.failed
    assert_same(local, out)  # the resumed training ends with the same weights, the analyses agree
    log = [line for line in (out / "cells.jsonl").read_text().splitlines() if KILLED in line]
    assert len(log) == 1 and '"attempts": 2' in log[0]
