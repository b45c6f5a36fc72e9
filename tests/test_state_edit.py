"""Editing hook_ssm_state propagates like state_override and only forward in time."""

import pytest
import torch
from nnsight import NNsight

from ssmlens.kernels import selective_scan
from ssmlens.models import Mamba

from helpers import rel_err

V = 30
HOOK = "blocks.0.mixer.hook_ssm_state"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return Mamba(vocab_size=V, d_model=24, n_layers=2, d_state=4).eval()


def _edit_at(t, value):
    def hook(h, hook):
        h = h.clone()
        h[:, t] = value
        return h
    return hook


@pytest.mark.parametrize("t", [0, 5, 13])
def test_edit_changes_only_t_and_later(model, t):
    tokens = torch.randint(0, V, (2, 14))
    value = torch.randn(2, 48, 4)
    with torch.no_grad():
        plain = model(tokens)
        ident = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda h, hook: h)])
        edited = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, _edit_at(t, value))])
    assert torch.equal(edited[:, :t], ident[:, :t])  # bit-identical before t
    assert torch.allclose(ident, plain, rtol=1e-5, atol=1e-5)
    assert (edited[:, t] - ident[:, t]).abs().max() > 1e-3
    if t + 1 < tokens.shape[1]:
        assert (edited[:, t + 1 :] - ident[:, t + 1 :]).abs().amax(-1).min() > 0  # every later position moved


def test_in_place_edit_is_an_edit(model):
    """TransformerLens hooks often edit in place and return the same tensor."""
    tokens = torch.randint(0, V, (2, 14))
    value = torch.randn(2, 48, 4)

    def in_place(h, hook):
        h[:, 5] = value
        return h

    with torch.no_grad():
        want = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, _edit_at(5, value))])
        got = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, in_place)])
    assert torch.equal(got, want)
    assert not torch.allclose(got, model(tokens), atol=1e-4)


def test_edit_equals_scan_state_override(model):
    """The mixer's propagation equals re-running the scan with state_override."""
    mixer = model.blocks[0].mixer
    tokens = torch.randint(0, V, (2, 12))
    t, value = 4, torch.randn(2, 48, 4)
    cache = {}
    with torch.no_grad():
        _, c = model.run_with_cache(tokens, names_filter=[f"blocks.0.mixer.hook_{n}" for n in
                                                          ("conv", "delta", "B", "C", "z")])
        model.run_with_hooks(tokens, fwd_hooks=[
            (HOOK, _edit_at(t, value)),
            ("blocks.0.mixer.hook_ssm_out", lambda y, hook: cache.setdefault("y", y)),
        ])
        ref = selective_scan(c["blocks.0.mixer.hook_conv"], c["blocks.0.mixer.hook_delta"], mixer.A,
                             c["blocks.0.mixer.hook_B"], c["blocks.0.mixer.hook_C"], mixer.D,
                             delta_softplus=False, state_override=([t], value[:, None]), backend="reference")
    assert rel_err(cache["y"], ref.out) < 1e-5


def test_nnsight_edit_agrees(model):
    tokens = torch.randint(0, V, (2, 10))
    t, value = 3, torch.randn(2, 48, 4)
    want = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, _edit_at(t, value))])
    wrapped = NNsight(model)
    with wrapped.trace(tokens):
        h = wrapped.blocks[0].mixer.hook_ssm_state.output.clone()
        h[:, t] = value
        wrapped.blocks[0].mixer.hook_ssm_state.output = h
        got = wrapped.output.save()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[:, :t], want[:, :t])


def test_state_gradient_is_total_derivative(model):
    """d loss / d h_t from a backward hook equals the finite-difference effect of
    overriding h_t alone (so later states move too)."""
    tokens = torch.randint(0, V, (1, 9))
    t = 3
    grads = {}
    model.zero_grad()
    model.add_hook(HOOK, lambda g, hook: grads.setdefault("g", g.detach().clone()), dir="bwd")
    try:
        _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
        loss = model(tokens)[0, -1, 7]
        loss.backward()
    finally:
        model.reset_hooks()
    h = cache[HOOK].double()
    direction = torch.randn(48, 4)
    eps = 1e-3

    def loss_with(delta):
        with torch.no_grad():
            hook = _edit_at(t, (h[:, t] + delta * direction).float())
            return model.run_with_hooks(tokens, fwd_hooks=[(HOOK, hook)])[0, -1, 7].double()

    fd = (loss_with(eps) - loss_with(-eps)) / (2 * eps)
    analytic = (grads["g"][0, t].double() * direction).sum()
    assert abs(float(fd - analytic)) < 2e-3 * max(1.0, abs(float(fd)))
    assert abs(float(analytic)) > 1e-4  # a later position's logit depends on h_t
