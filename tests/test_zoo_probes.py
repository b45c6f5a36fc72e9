"""Probes on Based, H3 and Hyena through the generic forward path: batched patching
equals one forward per patch (state hooks included), attribution, interchange and
DAS, linear probes, and the structural ablations that make sense for each."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmlens.interp.tasks import corrupt, make_task
from ssmlens.models import build_model
from ssmlens.models.resume import resumable
from ssmlens.probes.ablation import NotApplicable, parse_ablation, run_ablated
from ssmlens.probes.attribution import attribution_patching
from ssmlens.probes.interchange import interchange_sweep, train_das
from ssmlens.probes.linear_sweep import probe_sweep
from ssmlens.probes.patching import patching_sweep, patching_sweep_reference

TASK = make_task("ar", n_keys=8, n_values=8, n_pairs=3)
V = TASK.vocab_size
CLEAN = TASK.sample(6, seed=0)
CORR = corrupt(CLEAN, "value", seed=1)
CONFIGS = {
    "based": {"feature_dim": 4, "n_heads": 2, "window": 3},
    "h3": {"d_state": 4},
    "hyena": {"l_max": 16, "filter_width": 8},
}
STATE_HOOK = {"based": "kv_state", "h3": "ssm_state", "hyena": "conv_out_1"}


def tiny(name: str):
    torch.manual_seed(0)
    model = build_model(name, vocab_size=V, d_model=16, n_layers=2, **CONFIGS[name]).eval()
    with torch.no_grad():  # a larger embedding so an untrained model's answer moves with the value
        model.embed.weight.normal_(0, 2.0)
    return model


@pytest.fixture(scope="module", params=list(CONFIGS))
def name(request):
    return request.param


@pytest.fixture(scope="module")
def model(name):
    return tiny(name)


def test_patching_batched_equals_one_forward_per_patch(name, model):
    """No resumed forwards for these blocks (no resume_hooks): the engine falls back to
    resuming at a block, and still equals the reference, state hooks included."""
    assert not resumable(model)
    hooks = f"resid_pre,{STATE_HOOK[name]}"
    fast = patching_sweep(model, CLEAN, CORR, hooks, "all", progress=False)
    slow = patching_sweep_reference(model, CLEAN, CORR, hooks, "all")
    assert fast.dims == slow.dims
    assert np.allclose(fast.values, slow.values, atol=1e-5, equal_nan=True)
    assert fast.attrs["engine_rows_resumed"] == 0 and fast.attrs["engine_rows"] > 0
    restored = fast.sel(metric="restored", hook="hook_resid_pre").values
    assert np.nanmax(np.abs(restored)) > 0.05  # the patches do something


def test_attribution_runs_on_state_hooks(name, model):
    hooks = f"resid_pre,{STATE_HOOK[name]}"
    attr = attribution_patching(model, CLEAN, CORR, hooks, "all")
    values = attr.sel(metric="delta").values
    assert np.isfinite(values[~np.isnan(values)]).all() and np.nanmax(np.abs(values)) > 0
    # the linear estimate is exact at patches that change nothing (positions before the corruption)
    first = int(torch.nonzero(CORR.tokens != CLEAN.tokens)[:, 1].min())
    assert np.allclose(attr.sel(metric="delta", hook="hook_resid_pre").values[:, :first], 0, atol=1e-6)


def test_interchange_and_das_run(name, model):
    sweep = interchange_sweep(model, CORR, CLEAN, "resid_pre", ["queried_value", "query"], progress=False)
    iia = sweep.sel(metric="iia").values
    assert iia.shape == (1, 2, 2) and ((iia >= 0) & (iia <= 1)).all()
    # a full-space interchange is activation patching (clean into corrupted)
    patched = patching_sweep(model, CLEAN, CORR, "resid_pre", ["queried_value", "query"], progress=False)
    assert np.allclose(sweep.sel(metric="p_label").values, patched.sel(metric="p_answer").values, atol=1e-6)
    result = train_das(model, CORR, CLEAN, "blocks.1.hook_resid_pre", "queried_value", k=2, steps=5, progress=False)
    assert len(result.losses) == 5 and np.isfinite(result.losses).all()


def test_linear_probes_on_mixer_hooks(name, model):
    hooks = {"based": "linear_out", "h3": "ssm_out", "hyena": "conv_out_2"}[name]
    da = probe_sweep(model, TASK.sample(24, seed=3), f"resid_post,{hooks}", "queried_value", ["query"],
                     control=False)
    acc = da.sel(metric="test_acc")
    assert acc.shape == (2, 2, 1) and np.isfinite(acc.values).all() and ((acc >= 0) & (acc <= 1)).all()
    # a probe on the training examples fits better than chance
    assert (da.sel(metric="train_acc") > da.sel(metric="chance")).all()


def _seen(model, ablation, names):
    bound = parse_ablation(ablation).bind(model, CLEAN)
    got = {}
    grab = [(n, lambda x, hook: got.__setitem__(hook.name, x.detach().clone())) for n in names]
    with torch.no_grad(), model.hooks(fwd_hooks=bound.fwd_hooks() + grab):
        model(CLEAN.tokens)
    return got


def test_no_conv_makes_the_short_conv_pointwise():
    for name in ("based", "hyena"):
        model = tiny(name)
        mixer = model.blocks[0].mixer
        got = _seen(model, "no_conv@0", ["blocks.0.mixer.hook_x", "blocks.0.mixer.hook_conv"])
        x = got["blocks.0.mixer.hook_x"]
        want = x * mixer.conv1d.weight[:, 0, -1] + mixer.conv1d.bias  # no activation in these convs
        assert torch.allclose(got["blocks.0.mixer.hook_conv"], want, atol=1e-6)
        ident = _seen(model, "no_conv:identity@0", ["blocks.0.mixer.hook_x", "blocks.0.mixer.hook_conv"])
        assert torch.equal(ident["blocks.0.mixer.hook_conv"], ident["blocks.0.mixer.hook_x"])
    with pytest.raises(NotApplicable, match="no mixer.hook_conv"):
        parse_ablation("no_conv").bind(tiny("h3"), CLEAN).fwd_hooks()


def test_no_window_removes_the_window_branch():
    model = tiny("based")
    with torch.no_grad():
        want = build_model("based", vocab_size=V, d_model=16, n_layers=2, **{**CONFIGS["based"], "window": 0})
        # the same weights without the window: out_proj keeps its linear-attention half
        state = {k: v for k, v in model.state_dict().items() if "W_window" not in k}
        for l in range(2):
            key = f"blocks.{l}.mixer.out_proj.weight"
            w = model.blocks[l].mixer.out_proj.weight
            state[key] = w.reshape(16, 2, 2, 8)[:, :, 0].reshape(16, 16)  # (h, [linear; window], e) columns
        want.load_state_dict(state)
        assert torch.allclose(run_ablated(model, CLEAN, "no_window"), want.eval()(CLEAN.tokens), atol=1e-5)
    got = _seen(model, "no_window@1", ["blocks.0.mixer.hook_window_out", "blocks.1.mixer.hook_window_out"])
    assert not torch.equal(got["blocks.0.mixer.hook_window_out"], torch.zeros(1))
    assert (got["blocks.1.mixer.hook_window_out"] == 0).all()
    with pytest.raises(NotApplicable):
        parse_ablation("no_window").bind(tiny("h3"), CLEAN).fwd_hooks()


def test_no_shift_passes_k_through():
    model = tiny("h3")
    got = _seen(model, "no_shift", ["blocks.0.mixer.hook_k", "blocks.0.mixer.hook_shift_out", "blocks.0.mixer.hook_kv",
                                    "blocks.0.mixer.hook_v"])
    assert torch.equal(got["blocks.0.mixer.hook_shift_out"], got["blocks.0.mixer.hook_k"])
    assert torch.allclose(got["blocks.0.mixer.hook_kv"], got["blocks.0.mixer.hook_k"] * got["blocks.0.mixer.hook_v"])
    with torch.no_grad():
        assert not torch.allclose(run_ablated(model, CLEAN, "no_shift"), model(CLEAN.tokens), atol=1e-4)


def test_truncate_filter():
    model = tiny("hyena")
    got = _seen(model, "truncate_filter:2@0", ["blocks.0.mixer.hook_filter", "blocks.1.mixer.hook_filter"])
    h0, h1 = got["blocks.0.mixer.hook_filter"], got["blocks.1.mixer.hook_filter"]
    assert (h0[..., 2:] == 0).all() and (h0[..., :2] != 0).any()
    assert (h1[..., 2:] != 0).any()
    default = _seen(model, "truncate_filter", ["blocks.0.mixer.hook_filter"])["blocks.0.mixer.hook_filter"]
    assert (default[..., 3:] == 0).all() and (default[..., :3] != 0).any()  # d_conv = 3 lags
    assert parse_ablation("truncate_filter:4@1").label == "truncate_filter:4@1"
    with pytest.raises(ValueError, match="number of lags"):
        parse_ablation("truncate_filter:abc")
    with pytest.raises(NotApplicable):
        parse_ablation("truncate_filter").bind(tiny("based"), CLEAN).fwd_hooks()
