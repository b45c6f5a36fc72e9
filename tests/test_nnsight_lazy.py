"""Under nnsight, costly values (SSM states, attention patterns) are computed only where
the trace reads or writes them, as with TransformerLens hooks (DESIGN §2; issue 12,
item 11)."""

from __future__ import annotations

import pytest
import torch
from nnsight import NNsight

import ssmlens.models.mamba_mixer as mamba_mixer
from ssmlens.interp.hook_names import is_costly
from ssmlens.interp.hooks import HookPoint
from ssmlens.models import model_names
from ssmlens.models.attention import Attention

from every_model import build_small, tokens


@pytest.fixture
def listened(monkeypatch):
    """Names of the hook points that answered ``listened`` True, and how often."""
    seen: list[str] = []
    original = HookPoint.listened

    def spy(self):
        answer = original.fget(self)
        if answer:
            seen.append(self.name)
        return answer

    monkeypatch.setattr(HookPoint, "listened", property(spy))
    return seen


@pytest.fixture
def scans(monkeypatch):
    """state_positions of every selective_scan a Mamba mixer runs."""
    calls: list = []
    original = mamba_mixer.selective_scan

    def spy(*args, **kwargs):
        calls.append(kwargs.get("state_positions"))
        return original(*args, **kwargs)

    monkeypatch.setattr(mamba_mixer, "selective_scan", spy)
    return calls


@pytest.fixture
def patterns(monkeypatch):
    calls: list = []
    original = Attention.explicit_attention

    def spy(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Attention, "explicit_attention", spy)
    return calls


@pytest.mark.parametrize("name", model_names())
def test_a_trace_reading_the_residual_materializes_no_costly_value(name, listened):
    model = build_small(name)
    x = tokens()
    wrapped = NNsight(model)
    with torch.no_grad():
        with wrapped.trace(x):
            resid = wrapped.blocks[1].hook_resid_post.output.save()
            out = wrapped.output.save()
        _, cache = model.run_with_cache(x, names_filter=["blocks.1.hook_resid_post"])
    costly = [n for n in listened if is_costly(n)]
    assert costly == [], f"an nnsight trace that reads only the residual switched on {costly}"
    assert torch.allclose(resid, cache["blocks.1.hook_resid_post"], rtol=1e-5, atol=1e-6)
    assert torch.allclose(out, model(x), rtol=1e-5, atol=1e-6)


def test_residual_trace_runs_no_state_scan_and_no_explicit_attention(scans, patterns):
    for name in ("mamba", "transformer", "bmojo"):
        model = build_small(name)
        wrapped = NNsight(model)
        with torch.no_grad(), wrapped.trace(tokens()):
            wrapped.blocks[1].hook_resid_post.output.save()
    assert scans and all(p is None for p in scans), scans  # every mixer scanned, none wrote states
    assert patterns == []  # fused attention everywhere


def test_a_trace_reading_one_state_computes_that_layer_only(scans):
    model = build_small("mamba")
    x = tokens()
    wrapped = NNsight(model)
    with torch.no_grad():
        with wrapped.trace(x):
            state = wrapped.blocks[1].mixer.hook_ssm_state.output.save()
        _, cache = model.run_with_cache(x, names_filter=["blocks.1.mixer.hook_ssm_state"])
    assert scans[:2] == [None, "all"]  # layer 0 without states, layer 1 with
    assert torch.allclose(state, cache["blocks.1.mixer.hook_ssm_state"], rtol=1e-5, atol=1e-6)


def test_a_state_edit_through_nnsight_propagates_as_a_hook_edit(patterns):
    model = build_small("mamba")
    x = tokens()
    t, value = 4, torch.randn(2, 32, 4)

    def edit(h, hook):
        h = h.clone()
        h[:, t] = value
        return h

    with torch.no_grad():
        want = model.run_with_hooks(x, fwd_hooks=[("blocks.1.mixer.hook_ssm_state", edit)])
        wrapped = NNsight(model)
        with wrapped.trace(x):
            h = wrapped.blocks[1].mixer.hook_ssm_state.output.clone()
            h[:, t] = value
            wrapped.blocks[1].mixer.hook_ssm_state.output = h
            got = wrapped.output.save()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[:, :t], want[:, :t])
    assert not torch.allclose(got[:, t:], model(x)[:, t:], atol=1e-4)


def test_a_trace_reading_a_pattern_computes_that_pattern_only(patterns):
    model = build_small("transformer")
    x = tokens()
    wrapped = NNsight(model)
    with torch.no_grad():
        with wrapped.trace(x):
            pattern = wrapped.blocks[0].attn.hook_pattern.output.save()
        _, cache = model.run_with_cache(x, names_filter=["blocks.0.attn.hook_pattern"])
    assert patterns == [model.blocks[0].attn, model.blocks[0].attn]  # the trace's and the cache's
    assert torch.allclose(pattern, cache["blocks.0.attn.hook_pattern"])


def test_plain_forward_after_a_trace_listens_to_nothing(listened):
    model = build_small("bmojo")
    wrapped = NNsight(model)
    with torch.no_grad():
        with wrapped.trace(tokens()):
            wrapped.blocks[0].attn.hook_pattern.output.save()
        listened.clear()
        model(tokens())
    assert listened == []


def test_nnsight_caches_get_the_states_they_name(scans):
    model = build_small("mamba")
    x = tokens()
    wrapped = NNsight(model)
    with torch.no_grad():
        _, ref = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_ssm_state"))
        scans.clear()
        with wrapped.trace(x) as tracer:
            one = tracer.cache(modules=[wrapped.blocks[0].mixer.hook_ssm_state])
        assert scans == ["all", None]  # the cached layer only
        with wrapped.trace(x) as tracer:
            every = tracer.cache()  # every module, costly ones included
    assert scans[2:] == ["all", "all"]
    assert torch.allclose(one["model.blocks.0.mixer.hook_ssm_state"].output, ref["blocks.0.mixer.hook_ssm_state"])
    assert torch.allclose(every["model.blocks.1.mixer.hook_ssm_state"].output, ref["blocks.1.mixer.hook_ssm_state"])
