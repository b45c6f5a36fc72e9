"""Norm hooks as TransformerLens has them (``hook_scale``, ``hook_normalized``) on every
norm of every registered model (issue 12, item 10): right values, edits propagate,
gradients reach them, and a forward that does not listen is untouched."""

from __future__ import annotations

import pytest
import torch

from ssmlens.interp.hook_names import dims_for
from ssmlens.models import model_names
from ssmlens.models.norm import LayerNorm, RMSNorm, _HookedNorm

from every_model import build_small, tokens


def _norm_names(model) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (RMSNorm, LayerNorm))]


def _unembed_bias(model) -> torch.Tensor:
    bias = getattr(model.ln_final, "bias", None)
    return 0 if bias is None else bias.detach() @ model.W_U.detach()


@pytest.mark.parametrize("name", model_names())
def test_every_norm_has_scale_and_normalized_hooks(name):
    model = build_small(name)
    norms = _norm_names(model)
    assert "ln_final" in norms and any(n.startswith("blocks.0.") for n in norms)
    x = tokens()
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
    for norm in norms:
        for hook in ("hook_scale", "hook_normalized"):
            assert f"{norm}.{hook}" in model.hook_dict
            value = cache[f"{norm}.{hook}"]
            assert len(dims_for(f"{norm}.{hook}", value.ndim)) == value.ndim
            assert not dims_for(f"{norm}.{hook}", value.ndim)[0].startswith("dim_"), f"{norm}.{hook} has no dims"
        assert cache[f"{norm}.hook_scale"].shape == (*x.shape, 1)
    # the scale is TransformerLens': sqrt(mean(x²) + ε) (RMS) or sqrt(var + ε) (LayerNorm) of the input
    n = len(model.blocks)
    resid = cache[f"blocks.{n - 1}.hook_resid_post"].double()
    ln = model.ln_final
    centered = resid - resid.mean(-1, keepdim=True) if isinstance(ln, LayerNorm) else resid
    want = (centered.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
    torch.testing.assert_close(cache["ln_final.hook_scale"].double(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", model_names())
def test_listening_to_norms_changes_no_bit(name):
    """Read-only hooks on every norm: the explicit path's value is the fast path's exactly
    (resumed patching compares cached and fresh residuals bit for bit)."""
    model = build_small(name)
    x = tokens()
    names = [n for n in model.hook_dict if n.endswith(("hook_scale", "hook_normalized"))]
    with torch.no_grad():
        plain = model(x)
        hooked, cache = model.run_with_cache(x, names_filter=names)
    assert torch.equal(hooked, plain)
    assert len(cache) == len(names)


@pytest.mark.parametrize("name", model_names())
def test_scale_and_normalized_edits_propagate(name):
    model = build_small(name)
    x = tokens()
    with torch.no_grad():
        logits = model(x)
        bias = _unembed_bias(model)
        doubled = model.run_with_hooks(x, fwd_hooks=[("ln_final.hook_scale", lambda s, hook: s * 2)])
        torch.testing.assert_close(doubled, (logits - bias) / 2 + bias, rtol=1e-5, atol=1e-5)
        in_place = model.run_with_hooks(x, fwd_hooks=[("ln_final.hook_scale", lambda s, hook: s.mul_(2))])
        torch.testing.assert_close(in_place, doubled)
        zero = model.run_with_hooks(x, fwd_hooks=[("ln_final.hook_normalized", lambda v, hook: v * 0)])
        assert float(zero.abs().max()) == 0
        norm = _norm_names(model)[0]  # a block's first norm: an edit there moves later logits
        moved = model.run_with_hooks(x, fwd_hooks=[(f"{norm}.hook_scale", lambda s, hook: s * 3)])
        assert not torch.allclose(moved, logits, atol=1e-4)


@pytest.mark.parametrize("name", model_names())
def test_gradients_through_hooked_norms(name):
    """Hooks on the norms leave the gradients as they are, and a backward hook on a scale
    gets d loss / d scale (checked by a finite difference)."""
    model = build_small(name)
    x = tokens(b=1, L=8)
    model.zero_grad()
    model(x)[0, -1, 3].backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    grads = {}
    names = [n for n in model.hook_dict if n.endswith(("hook_scale", "hook_normalized"))]
    with model.hooks(fwd_hooks=[(n, lambda v, hook: v) for n in names],
                     bwd_hooks=[("ln_final.hook_scale", lambda g, hook: grads.setdefault("g", g.detach()))]):
        model(x)[0, -1, 3].backward()
    for n, g in plain.items():
        torch.testing.assert_close(model.get_parameter(n).grad, g, rtol=1e-4, atol=1e-6)
    g = grads["g"][0, -1, 0]

    def logit(factor):
        hook = ("ln_final.hook_scale", lambda s, hook: torch.cat([s[:, :-1], s[:, -1:] * factor], 1))
        with torch.no_grad():
            return float(model.run_with_hooks(x, fwd_hooks=[hook])[0, -1, 3].double())

    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=["ln_final.hook_scale"])
    s = float(cache["ln_final.hook_scale"][0, -1, 0])
    eps = 1e-3
    fd = (logit(1 + eps) - logit(1 - eps)) / (2 * eps * s)
    assert abs(fd) > 1e-4  # the logit depends on the scale
    assert abs(float(g) - fd) < 1e-2 * max(1.0, abs(fd))


def test_unhooked_norms_take_the_fast_path(monkeypatch):
    calls = []
    original = _HookedNorm._scale_through_hook
    monkeypatch.setattr(_HookedNorm, "_scale_through_hook", lambda self, s: calls.append(1) or original(self, s))
    for name in model_names():
        model = build_small(name)
        assert not any(m.hooked for m in model.modules() if isinstance(m, _HookedNorm))
        with torch.no_grad():
            model(tokens())
            model.run_with_cache(tokens(), names_filter=["blocks.0.hook_resid_post"])
    assert calls == []
    with model.hooks(fwd_hooks=[("ln_final.hook_scale", lambda s, hook: s)]):
        assert model.ln_final.hooked
        with torch.no_grad():
            model(tokens())
    assert calls == [1] and not model.ln_final.hooked
