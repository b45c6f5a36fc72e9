"""`ssmlens demo --no-serve` end to end, on tiny training budgets: it trains, writes
one complete patching store per model that the dashboard lists, and reuses them."""

import pytest

import ssmlens.interp.demo_train as demo_train
from helpers import written_ns
from ssmlens.interp.cli import main
from ssmlens.interp.store import list_runs, open_run


@pytest.fixture
def tiny_demo(monkeypatch):
    tiny = {name: dict(s, steps=12, eval_every=12, eval_size=32, stop_at_acc=None, warmup_steps=2)
            for name, s in demo_train.DEMO_SETTINGS.items()}
    monkeypatch.setattr(demo_train, "DEMO_SETTINGS", tiny)
    return tiny


def test_demo_writes_stores_and_reuses_them(tmp_path, tiny_demo, capsys):
    assert main(["demo", "--runs", str(tmp_path), "--examples", "8", "--no-serve"]) == 0
    out = capsys.readouterr().out
    for name in tiny_demo:
        store = tmp_path / "demo" / name
        run = open_run(store)
        assert run.is_complete and run.config["model_type"] == name
        assert any(r.startswith("patching/") for r in run.results())
        assert f"{name}: answer accuracy" in out
    assert "best: layer" in out
    listed = {info.run_id for info in list_runs(tmp_path) if info.complete}
    assert {f"demo/{name}" for name in tiny_demo} <= listed

    stamps = {name: written_ns(tmp_path / "demo" / name) for name in tiny_demo}
    assert main(["demo", "--runs", str(tmp_path), "--examples", "8", "--no-serve"]) == 0
    again = {name: written_ns(tmp_path / "demo" / name) for name in tiny_demo}
    assert again == stamps  # finished studies are reused, not rewritten


def test_demo_reruns_the_study_of_a_retrained_checkpoint(tmp_path, tiny_demo, monkeypatch):
    """New demo settings retrain a model at the same path: its stored study, computed
    on the old weights, must not be reused."""
    assert main(["demo", "--runs", str(tmp_path), "--examples", "8", "--no-serve"]) == 0
    before = {name: open_run(tmp_path / "demo" / name).config["checkpoint_sha256"] for name in tiny_demo}
    changed = dict(tiny_demo, mamba=dict(tiny_demo["mamba"], lr=tiny_demo["mamba"]["lr"] / 2))
    monkeypatch.setattr(demo_train, "DEMO_SETTINGS", changed)
    assert main(["demo", "--runs", str(tmp_path), "--examples", "8", "--no-serve"]) == 0
    after = {name: open_run(tmp_path / "demo" / name).config["checkpoint_sha256"] for name in tiny_demo}
    assert after["mamba"] != before["mamba"]  # retrained, and its study re-run on the new weights
    assert {k: v for k, v in after.items() if k != "mamba"} == {k: v for k, v in before.items() if k != "mamba"}
