"""``ssmlens cache`` and ``ssmlens patch`` on zoo checkpoints: Hyena's batch-free filters
are stored once, and the patching heatmaps include the models' state hooks."""

from __future__ import annotations

import pytest
import torch

from ssmlens.interp.cli import main
from ssmlens.interp.store import open_run
from ssmlens.models import load_model

TASK = ["--task", "ar", "--task-arg", "n_keys=8", "--task-arg", "n_values=8", "--task-arg", "n_pairs=2"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo-cli")
    configs = {"based": {"feature_dim": 4, "n_heads": 2, "window": 2}, "h3": {"d_state": 4},
               "hyena": {"l_max": 9, "filter_width": 8}}
    for name, extra in configs.items():
        args = ["train", "--model", name, *TASK, "--d-model", "16", "--layers", "2", "--steps", "2",
                "--batch-size", "4", "--eval-every", "2", "--eval-size", "8", "--device", "cpu", "--no-progress",
                "--out-dir", str(root), "--name", name]
        for key, value in extra.items():
            args += ["--model-arg", f"{key}={value}"]
        assert main(args) == 0
    return root


def test_cache_stores_hyena_filters_once(checkpoints, tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(["cache", str(checkpoints / "hyena"), "--n", "5", "--batch-size", "2", "--hooks",
                 "resid_pre,filter,conv_out_1", "--out", str(out), "--no-progress"]) == 0
    run = open_run(out)
    assert run.cache["blocks.1.mixer.hook_filter"].shape == (2, 16, 9)
    assert run.cache["blocks.1.mixer.hook_filter"].dims == ("order", "d_model", "lag")
    assert run.cache["blocks.0.hook_resid_pre"].shape == (5, 9, 16)
    model = load_model(checkpoints / "hyena" / "final")
    with torch.no_grad():
        want = model.blocks[0].mixer.filter.filters(9)
    assert torch.allclose(torch.as_tensor(run.cache["blocks.0.mixer.hook_filter"].numpy()), want, atol=1e-6)
    assert "cached" in capsys.readouterr().out


@pytest.mark.parametrize("name,state", [("based", "kv_state"), ("h3", "ssm_state"), ("hyena", "conv_out_2")])
def test_patch_writes_state_heatmaps(checkpoints, tmp_path, capsys, name, state):
    out = tmp_path / f"patch-{name}"
    assert main(["patch", str(checkpoints / name), "--n", "4", "--hooks", f"resid_pre,{state}",
                 "--out", str(out), "--no-progress"]) == 0
    run = open_run(out)
    results = set(run.results())
    assert any("resid_pre" in r for r in results) and any(state in r for r in results), results
