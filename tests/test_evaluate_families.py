"""The evaluation's sites and short-conv ablation on every family: which components each
model has, which ablation removes its short convolution, and that ``no_conv`` equals the
conv kernel reduced to its current tap (a weight edit, the reference) in every family
with a depthwise short conv, Mamba-2's x/B/C conv included."""

from __future__ import annotations

import copy

import pytest
import torch
from every_model import build_small, tokens

from ssmlens.probes.ablation import parse_ablation
from ssmlens.probes.evaluation.analyses import short_conv_ablation
from ssmlens.probes.evaluation.components import model_components


def _last_tap_copy(model):
    """The reference: a copy whose every short conv keeps only the tap of the current position."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for block in ref.blocks:
            mixer = getattr(block, "mixer", None)
            if mixer is not None and hasattr(mixer, "conv1d"):
                mixer.conv1d.weight[..., :-1] = 0
    return ref


@pytest.mark.parametrize("family", ["mamba", "mamba2", "based", "hyena", "moe_mamba"])
def test_no_conv_is_the_conv_reduced_to_its_current_tap(family):
    model = build_small(family, seed=1, l_max=20)
    x = tokens(b=2, L=20)
    ablated = parse_ablation("no_conv").bind(model)
    with torch.no_grad():
        with model.hooks(fwd_hooks=ablated.fwd_hooks()) as m:
            got = m(x)
        ref = _last_tap_copy(model)(x)
        plain = model(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the conv mattered (else this test checks nothing)
    assert not model.hook_dict["blocks.0.mixer.hook_conv"].fwd_hooks  # hooks removed afterwards


def test_no_conv_in_one_layer_of_mamba2():
    model = build_small("mamba2", seed=2)
    x = tokens(b=2, L=12)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.blocks[1].mixer.conv1d.weight[..., :-1] = 0
        with model.hooks(fwd_hooks=parse_ablation("no_conv@1").bind(model).fwd_hooks()) as m:
            torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,ablation,components", [
    ("transformer", None, {"resid": "hook_resid_pre", "mixer": "attn.hook_out", "attn_k": "attn.hook_k",
                           "attn_v": "attn.hook_v"}),
    ("mamba", "no_conv", {"resid": "hook_resid_pre", "mixer": "mixer.hook_out", "state": "mixer.hook_ssm_state",
                          "conv": "mixer.hook_conv"}),
    ("mamba2", "no_conv", {"resid": "hook_resid_pre", "mixer": "mixer.hook_out", "state": "mixer.hook_ssm_state",
                           "conv": "mixer.hook_conv"}),
    ("based", "no_conv", {"resid": "hook_resid_pre", "mixer": "mixer.hook_out", "state": "mixer.hook_kv_state",
                          "conv": "mixer.hook_conv"}),
    ("h3", "no_shift", {"resid": "hook_resid_pre", "mixer": "mixer.hook_out", "state": "mixer.hook_ssm_state",
                        "conv": "mixer.hook_shift_out"}),
    ("hyena", "no_conv", {"resid": "hook_resid_pre", "mixer": "mixer.hook_out", "long_conv": "mixer.hook_conv_out_2",
                          "conv": "mixer.hook_conv"}),
])
def test_each_family_has_its_sites_and_short_conv(family, ablation, components):
    model = build_small(family, seed=0, l_max=16)
    assert model_components(model) == components
    found = short_conv_ablation(model)
    assert (found[0] if found else None) == ablation
    if found:
        assert found[1] == components["conv"]
