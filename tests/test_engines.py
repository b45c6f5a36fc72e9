"""The execution layer without Ray: run_cells (order, retries, failures, streaming), the
resume helpers, a coordinator SIGKILLed mid-study that resumes to the uninterrupted table,
patching over prompt shards equal to one sweep, training grids that skip finished points.
The Ray engine's tests are in tests/test_engines_ray.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import engines_helpers as H
from helpers import written_ns
from ssmlens.interp.cli import main
from ssmlens.interp.engines import Cell, EngineError, cell_url, finished_run, interrupted_run, run_cells
from ssmlens.interp.store import create_run, open_run
from ssmlens.interp.tasks import make_task
from ssmlens.models import Mamba
from ssmlens.probes.ablation_study import run_study

TESTS = Path(__file__).resolve().parent
# cells that do not apply to a model are skipped with a warning; the tables say which
pytestmark = pytest.mark.filterwarnings("ignore::ssmlens.probes.ablation_study.AblationSkipped")


def test_run_cells_retries_records_failures_and_streams(tmp_path):
    seen = []
    cells = [Cell("a", H.double, {"x": 1}), Cell("flaky", H.fail_until, {"path": str(tmp_path / "f"), "failures": 1}),
             Cell("broken", H.fail_until, {"path": str(tmp_path / "b"), "failures": 99}), Cell("b", H.double, {"x": 4})]
    out = run_cells(cells, retries=1, progress=False, on_result=seen.append)
    assert list(out) == ["a", "flaky", "broken", "b"] and [o.key for o in seen] == ["a", "flaky", "broken", "b"]
    assert (out["a"].status, out["a"].result, out["a"].attempts) == ("done", 2, 1)
    assert (out["flaky"].status, out["flaky"].result, out["flaky"].attempts) == ("done", "ok after 1", 2)
    broken = out["broken"]
    assert (broken.status, broken.attempts, broken.result) == ("failed", 2, None)
    assert broken.error == "ValueError: planned failure 2" and "Traceback" in broken.detail
    # the attempts before the last say why a cell was retried
    assert out["a"].earlier_errors == [] and out["flaky"].earlier_errors == ["ValueError: planned failure 1"]
    assert broken.earlier_errors == ["ValueError: planned failure 1"]
    assert out["b"].result == 8  # the study went on after the failure
    assert run_cells([Cell("c", H.fail_until, {"path": str(tmp_path / "c"), "failures": 3})], retries=3,
                     progress=False)["c"].attempts == 4
    with pytest.raises(EngineError, match="repeated: \\['a'\\]"):
        run_cells([Cell("a", H.double, {"x": 1})] * 2, progress=False)
    with pytest.raises(EngineError, match="unknown engine 'dask'; valid engines: local, ray"):
        run_cells(cells, engine="dask")
    with pytest.raises(EngineError, match="retries must be an integer >= 0"):
        run_cells(cells, retries=-1)
    with pytest.raises(EngineError, match="gpus must be a number >= 0"):
        Cell("x", H.double, {"x": 1}, gpus=-0.5)


def test_resume_helpers(tmp_path):
    study = tmp_path / "runs" / "study"
    a, b = cell_url(study, "m/ar/zero:x@query"), cell_url(study, "m/ar/zero_x_query")
    assert a.startswith(str(study) + ".cells/") and a != b  # a sibling, never inside the study's run
    assert cell_url("memory://bucket/s", "shard-0") == "memory://bucket/s.cells/shard-0"
    config = {"kind": "cell", "n": 3, "hooks": ("a", "b")}
    assert finished_run(a, config) is None and not interrupted_run(a, config)
    w = create_run(a, config)
    assert finished_run(a, config) is None and interrupted_run(a, config)  # incomplete: run it again
    assert not interrupted_run(a, {**config, "n": 4})
    w.finish()
    assert finished_run(a, {"kind": "cell", "n": 3, "hooks": ["a", "b"]}) is not None
    assert finished_run(a, {**config, "n": 4}) is None  # made from other settings: run it again


def _parts(out) -> int:
    return sum(t.startswith("ablation_parts/") for t in open_run(out, require_complete=False).tables())


def kill_mid_study(out, engine: str, address: str | None = None, min_parts: int = 2, timeout: float = 120):
    """Start the slow study's coordinator in a subprocess and SIGKILL it once ``min_parts``
    cells are on disk; returns how many cells it had written."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", "import sys, engines_helpers as h; h.main(sys.argv[1:])", str(out), engine]
    proc = subprocess.Popen(cmd + ([address] if address else []), env=env, cwd=out.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert proc.poll() is None, f"the study ended before it was killed:\n{proc.stdout.read().decode()}"
            assert time.monotonic() < deadline, "no cell finished in time"
            try:
                if _parts(out) >= min_parts:
                    break
            except Exception:  # not created yet
                pass
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not open_run(out, require_complete=False).is_complete
    return _parts(out)


def test_sigkilled_coordinator_resumes_to_the_uninterrupted_table(tmp_path):
    out = tmp_path / "killed"
    done = kill_mid_study(out, "local")
    total = len(H.slow_mamba_study(0).cells())
    assert 2 <= done < total
    table = run_study(H.slow_mamba_study(0.0), out, progress=False)  # the same study, resumed
    run = open_run(out)
    assert run.metrics["n_evaluated"] == total - done  # only the unfinished cells
    whole = run_study(H.slow_mamba_study(0.0), None, progress=False)
    pd.testing.assert_frame_equal(table, whole)


def _tiny_checkpoint(path):
    torch.manual_seed(0)
    V = make_task("ar", n_keys=8, n_values=8, n_pairs=4).vocab_size
    Mamba(vocab_size=V, d_model=16, n_layers=2, d_state=4).save(path)
    return path


PATCH = ["--task", "ar", "--task-arg", "n_keys=8", "--task-arg", "n_values=8", "--task-arg", "n_pairs=4", "--n", "12",
         "--hooks", "resid_pre,ssm_state", "--no-progress"]
RATIOS = ["restored", "restored_logit_diff"]


def assert_same_patching(a, b, exact: bool):
    """Tables of two patching runs: equal, or (sharded vs one sweep) equal up to float32
    blocking: 1e-6 on the means, 1e-4 on the restored ratios, whose denominator (clean −
    corrupted) is ~1e-3 of the values here."""
    ta, tb = open_run(a).table("patching"), open_run(b).table("patching")
    if exact:
        pd.testing.assert_frame_equal(ta, tb)
        return
    pd.testing.assert_frame_equal(ta.drop(columns=RATIOS), tb.drop(columns=RATIOS), rtol=1e-6, atol=1e-9)
    pd.testing.assert_frame_equal(ta[RATIOS], tb[RATIOS], rtol=1e-4, atol=1e-6)


def test_patching_over_prompt_shards_equals_one_sweep_and_resumes(tmp_path, capsys):
    ckpt = str(_tiny_checkpoint(tmp_path / "ckpt"))
    assert main(["patch", ckpt, *PATCH, "--out", str(tmp_path / "one")]) == 0
    assert main(["patch", ckpt, *PATCH, "--shards", "3", "--out", str(tmp_path / "three")]) == 0
    assert_same_patching(tmp_path / "one", tmp_path / "three", exact=False)
    run = open_run(tmp_path / "three")
    shards = run.metrics["shards"]
    assert len(shards) == 3 and all(open_run(u).config["kind"] == "patching_shard" for u in shards)
    assert sum(open_run(u).batch().tokens.shape[0] for u in shards) == 12
    for name in ("clean_p_answer", "corrupted_logit_diff"):
        assert run.metrics[name] == pytest.approx(open_run(tmp_path / "one").metrics[name], rel=1e-6)

    # resume: a lost shard is recomputed, the finished ones are not touched
    created = {u: written_ns(u) for u in shards}
    import shutil

    shutil.rmtree(shards[1])
    assert main(["patch", ckpt, *PATCH, "--shards", "3", "--out", str(tmp_path / "again")]) == 0  # another out
    assert main(["patch", ckpt, *PATCH, "--shards", "3", "--out", str(tmp_path / "three"), "--overwrite"]) == 0
    assert [written_ns(u) == created[u] for u in shards] == [True, False, True]
    assert_same_patching(tmp_path / "three", tmp_path / "again", exact=True)
    capsys.readouterr()
    assert main(["patch", ckpt, *PATCH, "--shards", "13", "--out", str(tmp_path / "bad")]) == 2
    assert "--shards must be between 1 and the number of examples (12), got 13" in capsys.readouterr().err
    assert main(["patch", ckpt, *PATCH, "--shards", "2", "--attribution", "--out", str(tmp_path / "bad")]) == 2
    assert main(["patch", ckpt, *PATCH, "--address", "auto", "--out", str(tmp_path / "bad")]) == 2
    assert "apply to --engine ray only" in capsys.readouterr().err


TRAIN = ["train", "--task", "ar", "--task-arg", "n_keys=8", "--task-arg", "n_values=8", "--task-arg", "n_pairs=2",
         "--d-model", "16", "--layers", "1", "--steps", "4", "--batch-size", "8", "--eval-every", "2",
         "--eval-size", "16", "--device", "cpu", "--no-progress"]


def test_training_grid_trains_each_point_once(tmp_path, capsys):
    args = TRAIN + ["--grid", "model=mamba,transformer", "--grid", "lr=1e-3,3e-3", "--out-dir", str(tmp_path)]
    assert main(args) == 0
    names = ["mamba-ar-lr1e-3", "mamba-ar-lr3e-3", "transformer-ar-lr1e-3", "transformer-ar-lr3e-3"]
    rows = [json.loads(line) for line in (tmp_path / "grid.grid.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in rows) == names and all(r["status"] == "done" and r["step"] == 4 for r in rows)
    assert {r["name"]: r["lr"] for r in rows}["transformer-ar-lr3e-3"] == 0.003
    # one point equals the same training run on its own
    assert main(TRAIN + ["--model", "mamba", "--lr", "3e-3", "--out-dir", str(tmp_path / "alone")]) == 0
    alone = json.loads((tmp_path / "alone" / "mamba-ar" / "summary.json").read_text())["eval"]
    assert {r["name"]: r["loss"] for r in rows}["mamba-ar-lr3e-3"] == alone["loss"]
    mtimes = {n: (tmp_path / n / "summary.json").stat().st_mtime_ns for n in names}
    capsys.readouterr()
    assert main(args) == 0  # finished points are not trained again
    assert {n: (tmp_path / n / "summary.json").stat().st_mtime_ns for n in names} == mtimes
    assert main(TRAIN + ["--grid", "lr=1e-3", "--grid", "dmodel=8"]) == 2
    assert "grid field 'dmodel': not a training config field" in capsys.readouterr().err


def test_engine_flags_are_checked(tmp_path, capsys):
    study = Path(__file__).resolve().parents[1] / "examples" / "ablation_study.yaml"
    assert main(["ablate", str(study), "--out", str(tmp_path / "a"), "--gpus-per-task", "0.5"]) == 2
    assert "apply to --engine ray only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ablate", str(study), "--out", str(tmp_path / "a"), "--engine", "ray", "--gpus-per-task", "-1"])
    assert "expected a number >= 0" in capsys.readouterr().err
    np.testing.assert_equal(run_cells([], progress=False), {})
    pytest.importorskip("ray")
    assert main(["ablate", str(study), "--out", str(tmp_path / "a"), "--engine", "ray", "--address", "127.0.0.1:1"]) == 2
    assert "cannot join the Ray cluster at '127.0.0.1:1': nothing answers there" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_fsspec_urls_work_the_same(tmp_path):
    """A study and prompt shards into ``memory://`` (the fsspec URL every worker of this
    process reaches) give what they give on a local path."""
    ckpt = str(_tiny_checkpoint(tmp_path / "ckpt"))
    url = f"memory://engines-{os.getpid()}/p"
    assert main(["patch", ckpt, *PATCH, "--shards", "2", "--out", url]) == 0
    assert main(["patch", ckpt, *PATCH, "--shards", "2", "--out", str(tmp_path / "p")]) == 0
    assert_same_patching(url, tmp_path / "p", exact=True)
    assert all(u.startswith(url + ".cells/") for u in open_run(url).metrics["shards"])
    table = run_study(H.study(), f"memory://engines-{os.getpid()}/a", progress=False)
    pd.testing.assert_frame_equal(table, run_study(H.study(), tmp_path / "a", progress=False))
