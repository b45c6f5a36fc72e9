"""The Ray engine on a local Ray (2 CPUs, no GPU), started once for this module: the
example ablation study gives the local engine's table; a Ray worker SIGKILLed mid-cell is
retried and the table is unchanged; a coordinator joined to the cluster (``--address``)
and SIGKILLed mid-study resumes to the uninterrupted table; prompt shards and a training
grid give the local engine's numbers; a cell asking for a GPU the cluster lacks is refused."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

import engines_helpers as H  # noqa: E402
from test_engines import PATCH, TRAIN, _tiny_checkpoint, assert_same_patching, kill_mid_study  # noqa: E402

from ssmlens.interp.cli import main  # noqa: E402
from ssmlens.interp.engines import Cell, EngineError, run_cells  # noqa: E402
from ssmlens.interp.store import open_run  # noqa: E402
from ssmlens.probes.ablation_study import run_study  # noqa: E402

TESTS = Path(__file__).resolve().parent
# cells that do not apply to a model are skipped with a warning; the tables say which
pytestmark = pytest.mark.filterwarnings("ignore::ssmlens.probes.ablation_study.AblationSkipped")
EXAMPLE = TESTS.parent / "examples" / "ablation_study.yaml"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray whose workers import ssmlens and these helpers (PYTHONPATH is inherited)."""
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


RAY = {"engine": "ray"}


def test_example_study_on_ray_equals_the_local_engine(cluster, tmp_path, capsys):
    assert main(["ablate", str(EXAMPLE), "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    assert main(["ablate", str(EXAMPLE), "--out", str(tmp_path / "ray"), "--engine", "ray", "--no-progress"]) == 0
    local, on_ray = open_run(tmp_path / "local"), open_run(tmp_path / "ray")
    pd.testing.assert_frame_equal(local.table("ablation"), on_ray.table("ablation"))  # bit for bit
    assert on_ray.metrics["n_evaluated"] == 15 and on_ray.metrics["n_skipped"] == 7
    assert capsys.readouterr().out.count("wrote ablation run store") == 2


def test_a_killed_worker_is_retried_and_the_table_is_unchanged(cluster, tmp_path):
    where = tmp_path / "markers"
    where.mkdir()
    study = H.study([H.Stall(a, str(where)) if a == "clamp_delta" else a for a in H.ABLATIONS])
    killed = []

    def kill_the_stalled_worker():
        marker = where / "clamp_delta.pid"
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the pid is written before the sleep starts
        pid = int(marker.read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_the_stalled_worker, daemon=True)
    killer.start()
    table = run_study(study, tmp_path / "out", progress=False, engine={**RAY, "retries": 1})
    killer.join(5)
    assert killed and table.attrs["failed"] == []
    assert int((where / "clamp_delta.done").read_text()) != killed[0]  # a second worker finished the cell
    pd.testing.assert_frame_equal(table, run_study(H.study(), None, progress=False))


def test_sigkilled_coordinator_on_ray_resumes_to_the_uninterrupted_table(cluster, tmp_path):
    out = tmp_path / "killed"
    done = kill_mid_study(out, "ray", address=cluster)  # a separate driver joined to this cluster
    total = len(H.slow_mamba_study(0).cells())
    assert 2 <= done < total
    table = run_study(H.slow_mamba_study(0.0), out, progress=False, engine=RAY)
    assert open_run(out).metrics["n_evaluated"] == total - done
    pd.testing.assert_frame_equal(table, run_study(H.slow_mamba_study(0.0), None, progress=False))


def test_prompt_shards_and_a_training_grid_on_ray_equal_the_local_engine(cluster, tmp_path):
    ckpt = str(_tiny_checkpoint(tmp_path / "ckpt"))
    for engine in ("local", "ray"):
        assert main(["patch", ckpt, *PATCH, "--shards", "2", "--engine", engine, "--out", str(tmp_path / engine)]) == 0
        grid = ["--grid", "model=mamba,transformer", "--out-dir", str(tmp_path / f"grid-{engine}")]
        assert main(TRAIN + grid + ["--engine", engine]) == 0
    assert_same_patching(tmp_path / "local", tmp_path / "ray", exact=True)
    rows = {e: [json.loads(x) for x in (tmp_path / f"grid-{e}" / "grid.grid.jsonl").read_text().splitlines()]
            for e in ("local", "ray")}
    by_name = {e: {r["name"]: (r["acc"], r["loss"], r["step"]) for r in rs} for e, rs in rows.items()}
    assert by_name["local"] == by_name["ray"] and len(by_name["ray"]) == 2


def test_a_cell_asking_for_a_missing_gpu_is_refused(cluster, tmp_path):
    with pytest.raises(EngineError, match="asks for 0.5 GPU but the Ray cluster's nodes have none"):
        run_cells([Cell("g", H.double, {"x": 1}, gpus=0.5)], engine="ray", progress=False)
    out = run_cells([Cell("a", H.double, {"x": 2}), Cell("b", H.fail_until, {"path": "/nonexistent/x", "failures": 0})],
                    engine="ray", retries=0, progress=False)
    assert out["a"].result == 4 and out["b"].status == "failed" and "FileNotFoundError" in out["b"].error
    flaky = run_cells([Cell("f", H.fail_until, {"path": str(tmp_path / "f"), "failures": 1})], engine="ray",
                      retries=1, progress=False)["f"]
    assert (flaky.status, flaky.attempts, flaky.earlier_errors) == ("done", 2, ["ValueError: planned failure 1"])
