"""``ssmlens evaluate``: a tiny suite end to end (train, every analysis, stores, report),
resume (finished cells skipped, a killed run resumed), failed cells recorded, suite
errors named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import plotly.offline
import pytest
import yaml

from helpers import written_ns
from ssmlens.interp.cli import main
from ssmlens.interp.store import open_run
from ssmlens.probes.evaluation import SuiteError, load_suite, run_suite, suite_from_dict
from ssmlens.probes.report import external_references

TINY = {
    "name": "tiny",
    "task": "ar",
    "task_config": {"n_keys": 8, "n_values": 8, "n_pairs": 3},
    "widths": [16],
    "train": {"n_layers": 2, "steps": 20, "batch_size": 16, "eval_every": 20, "eval_size": 32, "warmup_steps": 5,
              "lr": 3e-3},
    "models": [
        {"family": "transformer", "model_config": {"n_heads": 2}},
        {"family": "mamba", "model_config": {"d_state": 4}},
        {"family": "bmojo", "model_config": {"n_heads": 2, "d_state": 4, "window": 3, "memory_size": 2,
                                             "threshold": 1.0}},
        {"family": "based", "model_config": {"feature_dim": 4, "window": 3}},
        {"family": "h3", "model_config": {"d_state": 4}},
        {"family": "hyena", "model_config": {"l_max": 11, "filter_width": 8}},
        {"family": "mamba2", "model_config": {"d_state": 4, "d_head": 8}},
    ],
    "analysis": {"n_examples": 8, "eval_size": 32, "memory_sizes": [0, 1]},
}


def write_suite(path: Path, suite: dict) -> Path:
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    suite = write_suite(root / "tiny.yaml", TINY)
    return suite, root / "out", run_suite(suite, root / "out", progress=False)


def test_tiny_suite_end_to_end(tiny):
    _, out, result = tiny
    assert not result.failed and len(result.rows) == 7 and result.report_rebuilt
    cells = {k: open_run(out / "cells" / k) for k in result.rows}
    mamba = cells["mamba-w16-lr0.003-s0"]
    names = set(mamba.results())
    assert {"accuracy", "interchange/resid", "interchange/state", "interchange/conv", "association/resid",
            "ablation/acc", "mixing/L0", "mixing/L1", "diagnostics/horizon"} <= names
    iia = mamba.result("interchange/resid")
    assert iia.dims == ("metric", "layer", "role") and "iia" in iia["metric"].values.tolist()
    assert set(iia["role"].values.tolist()) == {"queried_key", "queried_value", "query", "last"}
    for run in cells.values():  # every stored mixing matrix reproduced its mixer's output
        for layer in (0, 1):
            assert run.result(f"mixing/L{layer}").attrs["reproduce_rel_err"] < 1e-5
        assert run.config["kind"] == "evaluation_cell" and run.checkpoint["sha256"]
        assert run.cache.keys()  # browsable on every dashboard page
    bmojo = cells["bmojo-w16-lr0.003-s0"]
    assert {"memory/recall_vs_size", "memory/writes", "memory/attention", "memory/write_patching",
            "memory/write_change"} <= set(bmojo.results())
    assert 0 <= bmojo.metrics["acc_memory_0"] <= 1
    assert "diagnostics/horizon" not in cells["transformer-w16-lr0.003-s0"].results()
    # the zoo and Mamba-2: their own sites, short-conv ablation and diagnostics
    based, h3, hyena, mamba2 = (cells[f"{f}-w16-lr0.003-s0"] for f in ("based", "h3", "hyena", "mamba2"))
    assert based.result("interchange/state").attrs["hook"] == "mixer.hook_kv_state"
    assert based.result("mixing/L1")["head"].values.tolist() == ["linear.h0", "window.h0"]
    assert "diagnostics/horizon" not in based.results()  # no decay to measure (probes.diagnostics)
    assert h3.result("ablation/acc")["ablation"].values.tolist() == ["none", "no_shift", "no_shift@0", "no_shift@1"]
    assert h3.result("association/conv").attrs["hook"] == "mixer.hook_shift_out"
    assert h3.result("diagnostics/horizon").attrs["kind"] == "lti" and h3.metrics["diag_input_share"] == 0
    assert hyena.result("association/long_conv").attrs["hook"] == "mixer.hook_conv_out_2"
    assert hyena.result("ablation/acc").attrs["ablation"] == "no_conv"
    assert hyena.result("diagnostics/horizon").dims == ("layer", "filter")
    assert mamba2.result("diagnostics/horizon").dims == ("layer", "head")
    assert mamba2.result("mixing/L0").attrs["kind"] == "ssd_scan" and mamba2.metrics["conv_ablation"] == "no_conv"

    suite = open_run(out / "suite")
    assert suite.config["kind"] == "evaluation_suite"
    assert {"cells", "mechanism", "report"} <= set(suite.tables())
    mech = suite.table("mechanism")
    assert list(mech["architecture"]) == ["transformer", "mamba", "bmojo", "based", "h3", "hyena", "mamba2"]
    stored = dict(zip(*[suite.table("report")[c] for c in ("format", "content")]))
    html = (out / "report.html").read_text()
    assert stored["html"] == html and stored["markdown"] == (out / "report.md").read_text()


def test_report_is_self_contained_and_captioned(tiny):
    _, out, result = tiny
    html = (out / "report.html").read_text()
    assert external_references(html) == []
    assert html.count(plotly.offline.get_plotlyjs()[:500]) == 1  # plotly.js inline, once
    assert "<script src" not in html.lower() and "cdn.plot.ly/plotly" not in html
    assert html.count("Plotly.newPlot") >= 6
    md = (out / "report.md").read_text()
    table = md.split("## Mechanism table", 1)[1].split("\n## ", 1)[0]
    rows = [l for l in table.splitlines() if l.startswith("| ") and "architecture" not in l]
    assert [r.split("|")[1].strip() for r in rows] == ["transformer", "mamba", "bmojo", "based", "h3", "hyena",
                                                       "mamba2"]
    assert "[no_shift]" in next(r for r in rows if r.startswith("| h3 "))  # H3's short conv is its shift SSM
    # captions come from the numbers: each names the models and quotes values
    acc = {k: r["acc"] for k, r in result.rows.items()}
    first = md.split("## Accuracy vs width", 1)[1].split("\n## ", 1)[0]
    assert f"{100 * acc['mamba-w16-lr0.003-s0']:.0f}%" in first and "transformer" in first
    conv = md.split("## Short-convolution ablation", 1)[1].split("\n## ", 1)[0]
    assert "mamba w16" in conv and "transformer" not in conv  # a Transformer has no short conv
    assert re.search(r"bmojo w16 \d+% with its 2-token memory", md)


def test_rerun_skips_everything(tiny):
    suite, out, first = tiny
    created = {k: written_ns(out / "cells" / k) for k in first.rows}
    finals = {p: p.stat().st_mtime_ns for p in (out / "models").glob("*/final/model.safetensors")}
    again = run_suite(suite, out, progress=False)
    assert sorted(again.skipped) == sorted(first.rows) and not again.report_rebuilt
    assert {k: written_ns(out / "cells" / k) for k in again.rows} == created
    assert {p: p.stat().st_mtime_ns for p in finals} == finals
    assert again.rows["mamba-w16-lr0.003-s0"]["acc"] == first.rows["mamba-w16-lr0.003-s0"]["acc"]


def test_killed_run_resumes(tmp_path, monkeypatch):
    from ssmlens.probes.evaluation import analyses

    suite = write_suite(tmp_path / "s.yaml", {**TINY, "models": TINY["models"][:2]})
    real = analyses.conv_ablation

    def killed(model, *args, **kwargs):  # the process dies while analysing the second model (Mamba)
        if any(n.endswith("mixer.hook_conv") for n in model.hook_dict):
            raise KeyboardInterrupt
        return real(model, *args, **kwargs)

    monkeypatch.setattr(analyses, "conv_ablation", killed)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, tmp_path / "out", progress=False)
    first = open_run(tmp_path / "out" / "cells" / "transformer-w16-lr0.003-s0")  # no conv: finished
    assert first.is_complete
    first_written = written_ns(first.url)
    assert not (tmp_path / "out" / "cells" / "mamba-w16-lr0.003-s0" / "zarr.json").exists()
    assert list((tmp_path / "out" / "models").glob("mamba-*/final"))  # its model was trained

    monkeypatch.setattr(analyses, "conv_ablation", real)
    result = run_suite(suite, tmp_path / "out", progress=False)
    assert result.skipped == ["transformer-w16-lr0.003-s0"] and not result.failed
    assert written_ns(tmp_path / "out" / "cells" / "transformer-w16-lr0.003-s0") == first_written
    assert result.rows["mamba-w16-lr0.003-s0"]["reused_model"] is True


def test_failed_cell_is_recorded_and_the_rest_goes_on(tmp_path, capsys):
    broken = {"family": "transformer", "name": "broken", "model_config": {"n_heads": 3}}  # 3 does not divide 16
    suite = write_suite(tmp_path / "s.yaml", {**TINY, "models": [broken, TINY["models"][0]]})
    code = main(["evaluate", str(suite), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 1
    err = capsys.readouterr()
    assert "FAILED broken-w16-lr0.003-s0: ValueError: n_heads=3 must divide d_model=16" in err.err
    assert "Mechanism table" in err.out and "| transformer | 16 |" in err.out
    cells = open_run(tmp_path / "out" / "suite").table("cells").set_index("key")
    assert cells.loc["broken-w16-lr0.003-s0", "status"] == "failed"
    assert "n_heads=3 must divide" in cells.loc["broken-w16-lr0.003-s0", "error"]
    assert cells.loc["transformer-w16-lr0.003-s0", "status"] == "done"
    log = [json.loads(l) for l in (tmp_path / "out" / "cells.jsonl").read_text().splitlines()]
    assert [r["status"] for r in log] == ["failed", "done"]
    assert "n_heads=3 must divide" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize("change,message", [
    ({"models": [{"family": "mamb"}]}, r"suite.models\[0\].family: unknown model 'mamb' \(did you mean mamba"),
    ({"models": [{"family": "mamba", "stepz": 3}]}, r"suite.models\[0\]: unknown field 'stepz' \(did you mean steps"),
    ({"models": [{"family": "mamba", "lr": "fast"}]}, r"suite.models\[0\].lr: expected a learning rate"),
    ({"models": [{"family": "mamba", "d_model": 8}]}, r"set by the suite"),
    ({"models": ["mamba", "mamba"]}, r"cell 'mamba-w16-lr0.003-s0' is also made by suite.models\[0\]"),
    ({"analysis": {"components": ["resid", "kv"]}}, r"suite.analysis.components: unknown \['kv'\]"),
    ({"task_config": {"n_pairs": 0}}, r"suite.task_config: n_pairs must be at least 1"),
    ({"train": {"batch_size": 0}}, r"batch_size must be an integer >= 1"),
])
def test_suite_errors_name_the_field(tmp_path, change, message):
    with pytest.raises(SuiteError, match=message):
        suite_from_dict({**TINY, **change}).cells(tmp_path)


def test_shipped_suites_load(tmp_path):
    root = Path(__file__).resolve().parents[1] / "examples" / "suites"
    quick, arora = load_suite(root / "quick.yaml"), load_suite(root / "arora-ar.yaml")
    families = ["transformer", "based", "mamba", "mamba2", "h3", "hyena"]
    assert set(families + ["bmojo"]) <= {c.family for c in quick.cells(tmp_path)}
    assert len({c.width for c in quick.cells(tmp_path)}) == 2
    cells = arora.cells(tmp_path)
    assert arora.task_config == {"n_keys": 4096, "n_values": 4096, "n_pairs": 16}
    assert [c.family for c in cells] == [f for f in families for _ in (64, 128)]  # the Transformers first
    assert {c.width for c in cells} == {64, 128}
    assert all(c.train["device"] == "cuda" and c.train["max_time_s"] and c.gpus == 0.14 for c in cells)
    assert arora.analysis.device == "train"  # the analyses run on the training GPU
    # the config hash names the model directory: an edited training config trains a new model
    a = suite_from_dict(TINY).cells(tmp_path)[0]
    b = suite_from_dict({**TINY, "train": {**TINY["train"], "steps": 21}}).cells(tmp_path)[0]
    c = suite_from_dict({**TINY, "train": {**TINY["train"], "log_every": 3}}).cells(tmp_path)[0]
    assert a.key == b.key and a.train_hash != b.train_hash and a.train_hash == c.train_hash


def test_answer_accuracy_equals_the_full_logits_reference():
    import torch

    from ssmlens.interp.tasks import make_task
    from ssmlens.models import Mamba
    from ssmlens.probes.ablation import parse_ablation
    from ssmlens.probes.ablation_study import evaluate_cell
    from ssmlens.probes.evaluation.accuracy import answer_accuracy

    torch.manual_seed(0)
    model = Mamba(vocab_size=19, d_model=16, n_layers=2, d_state=4).eval()
    batch = make_task("ar", n_keys=8, n_values=8, n_pairs=3).sample(40, seed=3)
    for spec in ("none", "no_conv", "zero:blocks.1.hook_resid_pre@queried_value"):
        fast = answer_accuracy(model, batch, 16, spec)
        ref = {r["metric"]: r["value"] for r in evaluate_cell(model, batch, parse_ablation(spec), ["acc", "loss"], 16)}
        assert fast["acc"] == ref["acc"] and fast["loss"] == pytest.approx(ref["loss"], rel=1e-6), spec


def test_deadline_leaves_cells_for_the_next_run(tmp_path):
    suite = suite_from_dict({**TINY, "models": TINY["models"][:2]})
    result = run_suite(suite, tmp_path / "out", deadline_s=0, progress=False)
    assert result.rows == {} and result.outcomes == {} and not result.failed
    cells = open_run(tmp_path / "out" / "suite").table("cells")
    assert list(cells["status"]) == ["not run", "not run"]
    assert "0 finished" in (tmp_path / "out" / "report.md").read_text()


def test_a_cell_that_failed_and_whose_retry_missed_the_deadline_is_failed(tmp_path, monkeypatch):
    """The retry of a failed cell that finds the deadline passed does not hide the failure
    as "not run" (an arora-ar cell on the GPU was reported so, its error lost)."""
    import time

    from ssmlens.probes.evaluation import cell as cell_module

    real, calls = cell_module.cell_task, []

    def fail_past_the_deadline_then_real(**kwargs):
        calls.append(kwargs["spec"]["key"])
        if len(calls) == 1:
            time.sleep(max(0.0, kwargs["deadline"] - time.time()) + 0.05)
            raise RuntimeError("planned failure after the deadline")
        return real(**kwargs)

    monkeypatch.setattr(cell_module, "cell_task", fail_past_the_deadline_then_real)
    suite = suite_from_dict({**TINY, "models": TINY["models"][1:2]})
    result = run_suite(suite, tmp_path / "out", deadline_s=0.5, progress=False)
    (key,) = calls[:1]
    assert calls == [key, key] and result.rows == {} and list(result.failed) == [key]
    assert "RuntimeError: planned failure after the deadline" in result.failed[key]
    assert "the retry found the suite's deadline passed" in result.failed[key]
    cells = open_run(tmp_path / "out" / "suite").table("cells")
    assert list(cells["status"]) == ["failed"] and "planned failure" in cells["error"][0]
    logged = [json.loads(line) for line in (tmp_path / "out" / "cells.jsonl").read_text().splitlines()]
    assert [(r["key"], r["status"]) for r in logged] == [(key, "failed")]


def test_a_missing_library_stops_before_any_training(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "plotly" else real(name, *a))
    suite = write_suite(tmp_path / "s.yaml", TINY)
    assert main(["evaluate", str(suite), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "needs plotly" in capsys.readouterr().err and not (tmp_path / "out" / "models").exists()


def test_overrides_and_engine_flags(tmp_path, capsys):
    suite = write_suite(tmp_path / "s.yaml", TINY)
    out = str(tmp_path / "out")
    assert main(["evaluate", str(suite), "--out", out, "--gpus-per-task", "0.5"]) == 2
    assert "--address and --gpus-per-task apply to --engine ray only" in capsys.readouterr().err
    assert main(["evaluate", str(suite), "--out", out, "--set", "models[9].lr=1"]) == 2
    assert "--set models[9].lr: no item [9] here" in capsys.readouterr().err
    assert main(["evaluate", str(suite), "--out", out, "--set", "train.stepz=3"]) == 2
    assert "suite.train: unknown training config field 'stepz' (did you mean steps?)" in capsys.readouterr().err
    code = main(["evaluate", str(suite), "--out", out, "--no-progress", "--no-report", "--set", "models=[transformer]",
                 "--set", "train.steps=5", "--set", "models[0].model_config.n_heads=4"])
    assert code == 0 and [p.name for p in (tmp_path / "out" / "cells").iterdir()] == ["transformer-w16-lr0.003-s0"]
    run = open_run(tmp_path / "out" / "cells" / "transformer-w16-lr0.003-s0")
    assert run.metrics["train_steps"] == 5 and run.config["model_config"]["n_heads"] == 4


def test_gpu_share_of_a_cell(tmp_path):
    on_gpu = {**TINY, "train": {**TINY["train"], "device": "cuda"}}
    assert {c.gpus for c in suite_from_dict(on_gpu).cells(tmp_path)} == {1.0}  # a GPU each by default
    assert {c.gpus for c in suite_from_dict({**on_gpu, "resources": {"gpus": 0.25}}).cells(tmp_path)} == {0.25}
    assert {c.gpus for c in suite_from_dict(TINY).cells(tmp_path)} == {0.0}  # on the CPU


def test_gpu_suite_runs_end_to_end_with_tiny_overrides(tmp_path, capsys):
    """examples/suites/arora-ar.yaml as the GPU command runs it, shrunk for this CPU with --set."""
    suite = Path(__file__).resolve().parents[1] / "examples" / "suites" / "arora-ar.yaml"
    tiny = ["widths=[16]", "train.device=cpu", "models[*].steps=8", "models[*].max_time_s=30", "task_config.n_keys=64",
            "task_config.n_values=64", "train.batch_size=16", "train.eval_every=8", "train.eval_size=32",
            "analysis.n_examples=8", "analysis.eval_size=32", "resources.gpus=0"]
    args = ["evaluate", str(suite), "--out", str(tmp_path / "out"), "--deadline", "180", "--no-progress"]
    assert main(args + [f"--set={t}" for t in tiny]) == 0
    printed = capsys.readouterr().out
    assert "6 of 6 cells finished" in printed
    table = printed.split("Mechanism table", 1)[1]
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:] == \
        ["transformer", "based", "mamba", "mamba2", "h3", "hyena"]
    cells = open_run(tmp_path / "out" / "suite").table("cells")
    assert set(cells["status"]) == {"done"} and set(cells["train_steps"]) == {8}
