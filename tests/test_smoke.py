"""The smoke subset (`pytest -m smoke`): what .ci/run also checks against the newest
releases of every dependency (`make check-newest`): each registered model builds,
runs and caches; a run store round-trips; every CLI command answers --help from the
console script. Fast on purpose: it is the early warning, the full suite is the proof."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmlens.interp.cli import _commands
from ssmlens.interp.store import create_run, open_run
from ssmlens.interp.tasks import make_task
from ssmlens.models import build_model, model_names

pytestmark = pytest.mark.smoke

SMALL = {"d_model": 16, "n_layers": 2}
EXTRA = {"transformer": {"n_heads": 2}, "bmojo": {"n_heads": 2, "window": 3, "memory_size": 2},
         "mamba2": {"d_head": 8, "d_state": 8}}


@pytest.mark.parametrize("name", model_names())
def test_each_model_forward_and_cache(name):
    task = make_task("ar", n_keys=8, n_values=8, n_pairs=2)
    batch = task.sample(3, 0)
    torch.manual_seed(0)
    model = build_model(name, vocab_size=task.vocab_size, **SMALL, **EXTRA.get(name, {})).eval()
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch.tokens)
    assert logits.shape == (*batch.tokens.shape, task.vocab_size)
    assert torch.isfinite(logits).all()
    assert torch.equal(cache["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_post"])
    assert "hook_embed" in cache


def test_store_round_trip(tmp_path):
    task = make_task("ar", n_keys=8, n_values=8, n_pairs=2)
    batch = task.sample(4, 1)
    delta = torch.randn(4, batch.tokens.shape[1], 6)
    with create_run(tmp_path / "run", {"model": "smoke"}) as w:
        w.write_batch(batch)
        w.write_cache({"blocks.0.mixer.hook_delta": delta})
        w.set_metrics(acc=0.5)
    run = open_run(tmp_path / "run")
    assert run.is_complete and run.metrics["acc"] == 0.5 and run.config["model"] == "smoke"
    assert torch.equal(run.batch().tokens, batch.tokens)
    np.testing.assert_array_equal(np.asarray(run.cache["blocks.0.mixer.hook_delta"][:]), delta.numpy())


def _console_script() -> str:
    beside = Path(sys.executable).with_name("ssmlens")  # the venv's bin/ssmlens
    return str(beside) if beside.exists() else shutil.which("ssmlens")


@pytest.mark.parametrize("command", sorted(m.NAME for m in _commands()))
def test_each_cli_command_help(command, tmp_path):
    proc = subprocess.run([_console_script(), command, "--help"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: ssmlens {command}")
