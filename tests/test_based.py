"""Based: the Taylor feature map, linear attention (parallel form vs the float64
recurrence), the sliding window, and kv-state edits that propagate like state edits."""

import math

import pytest
import torch
from nnsight import NNsight

import ssmlens.models.based as based_module
from ssmlens.models import Based
from ssmlens.models.based import restarted_cumsum
from ssmlens.models.based_attention import (
    kv_states, linear_attention_parallel, linear_attention_reference, read_states, taylor_features,
    window_attention, window_attention_reference, window_scores,
)

from helpers import rel_err

V = 24
MIX = "blocks.0.mixer."


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return Based(vocab_size=V, d_model=16, n_layers=2, n_heads=2, feature_dim=4, window=3).eval()


def _tokens(seed: int, b: int = 2, L: int = 11) -> torch.Tensor:
    return torch.randint(0, V, (b, L), generator=torch.Generator().manual_seed(seed))


def test_taylor_feature_map_is_second_order_exp():
    q, k = torch.randn(5, 16, dtype=torch.float64), torch.randn(5, 16, dtype=torch.float64)
    dot = (q * k).sum(-1)
    want = 1 + dot / math.sqrt(16) + dot**2 / (2 * 16)
    assert torch.allclose((taylor_features(q) * taylor_features(k)).sum(-1), want, rtol=1e-12)
    assert taylor_features(q).shape[-1] == 1 + 16 + 256


@pytest.mark.parametrize("seed", [0, 1])
def test_parallel_and_state_forms_match_sequential_reference(seed):
    g = torch.Generator().manual_seed(seed)
    b, L, h, f, e = 2, 13, 3, 4, 5
    phi_q = taylor_features(torch.randn(b, L, h, f, generator=g))
    phi_k = taylor_features(torch.randn(b, L, h, f, generator=g))
    v = torch.randn(b, L, h, e, generator=g)
    y_ref, n_ref, S_ref = linear_attention_reference(phi_q, phi_k, v, eps=1e-12)
    numerator, n = linear_attention_parallel(phi_q, phi_k, v)
    assert rel_err(n, n_ref) < 1e-5
    assert rel_err(numerator / n[..., None], y_ref) < 1e-5
    S = kv_states(phi_k, v)
    assert rel_err(S, S_ref) < 1e-5
    assert rel_err(read_states(phi_q, S), numerator) < 1e-5


@pytest.mark.parametrize("window", [1, 3, 20])
def test_window_gather_matches_reference_and_full_scores(window):
    g = torch.Generator().manual_seed(window)
    q, k, v = (torch.randn(2, 9, 2, 4, generator=g) for _ in range(3))
    out, pattern = window_attention_reference(q, k, v, window)
    assert rel_err(window_attention(q, k, v, window), out) < 1e-5
    assert rel_err(window_scores(q, k, window).softmax(-1), pattern) < 1e-5


def test_non_finite_inputs_propagate_as_in_the_references():
    """A NaN (or inf) at position s reaches outputs at s and later only, as in the
    sequential references (the parallel form falls back to the state form)."""
    g = torch.Generator().manual_seed(2)
    phi_q = taylor_features(torch.randn(1, 8, 1, 3, generator=g))
    phi_k = taylor_features(torch.randn(1, 8, 1, 3, generator=g))
    v = torch.randn(1, 8, 1, 2, generator=g)
    v[0, 5, 0, 1] = float("nan")
    phi_k[0, 3, 0, 2] = float("inf")
    numerator, n = linear_attention_parallel(phi_q, phi_k, v)
    y_ref, n_ref, _ = linear_attention_reference(phi_q, phi_k, v, 1e-12)
    y = numerator / (n[..., None] + 1e-12)
    assert torch.equal(y.isnan(), y_ref.isnan()) and torch.equal(y.isinf(), y_ref.isinf())
    assert y[:, :3].isfinite().all()
    finite = y_ref.isfinite()
    assert rel_err(y[finite], y_ref[finite]) < 1e-5
    q, k, wv = (torch.randn(1, 8, 1, 2, generator=g) for _ in range(3))
    wv[0, 2, 0, 0] = float("nan")
    out, _ = window_attention_reference(q, k, wv, 3)
    got = window_attention(q, k, wv, 3)
    assert torch.equal(got.isnan(), out.isnan()) and got[:, :2].isfinite().all() and got[:, 5:].isfinite().all()


def test_restarted_cumsum_is_the_cut_recurrence():
    g = torch.Generator().manual_seed(4)
    diff = torch.randn(3, 9, 2, generator=g)
    restart = torch.rand(3, 9, generator=g) < 0.3
    e, want = torch.zeros(3, 2), []
    for t in range(9):
        e = torch.where(restart[:, t, None], 0.0, 1.0) * e + diff[:, t]
        want.append(e)
    assert rel_err(restarted_cumsum(diff, restart), torch.stack(want, 1)) < 1e-6


@pytest.mark.parametrize("listen", [False, True])
def test_window_attention_matches_reference(model, listen):
    """The fused path (no pattern) and the explicit path (pattern hooked) against the
    one-query-at-a-time float64 window."""
    tokens = _tokens(5)
    names = [MIX + n for n in ("hook_window_q", "hook_window_k", "hook_window_v", "hook_window_out")]
    if listen:
        names.append(MIX + "hook_window_pattern")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    out, pattern = window_attention_reference(*(cache[MIX + f"hook_window_{n}"] for n in "qkv"), window=3)
    assert rel_err(cache[MIX + "hook_window_out"], out) < 1e-5
    if listen:
        assert rel_err(cache[MIX + "hook_window_pattern"], pattern) < 1e-5
        assert (cache[MIX + "hook_window_pattern"][..., torch.ones(11, 11).triu(1).bool()] == 0).all()


def test_mixer_linear_out_matches_reference(model):
    tokens = _tokens(6)
    names = [MIX + f"hook_{n}" for n in ("q", "k", "v", "phi_q", "phi_k", "normalizer", "linear_out")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    assert rel_err(cache[MIX + "hook_phi_q"], taylor_features(cache[MIX + "hook_q"].double())) < 1e-6
    y, n, _ = linear_attention_reference(cache[MIX + "hook_phi_q"], cache[MIX + "hook_phi_k"], cache[MIX + "hook_v"],
                                         eps=1e-12)
    assert rel_err(cache[MIX + "hook_linear_out"], y) < 1e-5
    assert rel_err(cache[MIX + "hook_normalizer"], n) < 1e-5


def test_costly_values_only_when_listened(model, monkeypatch):
    calls = {"kv": 0, "pattern": 0}

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(based_module, "kv_states", count("kv", based_module.kv_states))
    monkeypatch.setattr(based_module, "window_scores", count("pattern", based_module.window_scores))
    tokens = _tokens(7)
    with torch.no_grad():
        plain = model(tokens)
        model.run_with_cache(tokens, names_filter=[MIX + "hook_out", MIX + "hook_phi_k"])
        assert calls == {"kv": 0, "pattern": 0}
        listened, cache = model.run_with_cache(tokens,
                                               names_filter=[MIX + "hook_kv_state", MIX + "hook_window_pattern"])
    assert calls == {"kv": 1, "pattern": 1}
    assert cache[MIX + "hook_kv_state"].shape == (2, 11, 2, 1 + 4 + 16, 8)
    assert torch.allclose(listened, plain, atol=1e-5)


def _edit(positions, values):
    def hook(S, hook):
        S = S.clone()
        for t, value in zip(positions, values):
            S[:, t] = value
        return S
    return hook


@pytest.mark.parametrize("positions", [[0], [4], [3, 7], [10]])
def test_kv_state_edit_matches_reference_override(model, positions):
    """An edit at t replaces S_t; later states evolve from it (a second edit restarts
    the carry): the linear output equals the float64 recurrence with those overrides,
    and nothing before the first edit moves."""
    tokens = _tokens(8)
    g = torch.Generator().manual_seed(sum(positions))
    values = [torch.randn(2, 2, 21, 8, generator=g) for _ in positions]
    names = [MIX + f"hook_{n}" for n in ("phi_q", "phi_k", "v", "linear_out")]
    with torch.no_grad():
        _, plain = model.run_with_cache(tokens, names_filter=names)
        edited = {}
        model.run_with_hooks(tokens, fwd_hooks=[(MIX + "hook_kv_state", _edit(positions, values))]
                             + [(n, lambda x, hook: edited.__setitem__(hook.name, x) or x) for n in names])
    y, _, _ = linear_attention_reference(plain[MIX + "hook_phi_q"], plain[MIX + "hook_phi_k"], plain[MIX + "hook_v"],
                                         1e-12, state_override=dict(zip(positions, values)))
    got = edited[MIX + "hook_linear_out"]
    first = positions[0]
    assert torch.equal(got[:, :first], plain[MIX + "hook_linear_out"][:, :first])
    assert rel_err(got[:, first:], y[:, first:]) < 1e-5
    assert (got[:, first:] - plain[MIX + "hook_linear_out"][:, first:]).abs().amax((-1, -2)).min() > 1e-3


def test_kv_state_edit_changes_logits_from_t_on_and_in_place_edits_count(model):
    tokens = _tokens(9)
    value = torch.randn(2, 2, 21, 8)
    hook = MIX + "hook_kv_state"

    def in_place(S, hook):
        S[:, 5] = value
        return S

    with torch.no_grad():
        plain = model(tokens)
        edited = model.run_with_hooks(tokens, fwd_hooks=[(hook, _edit([5], [value]))])
        again = model.run_with_hooks(tokens, fwd_hooks=[(hook, in_place)])
    assert torch.equal(edited[:, :5], plain[:, :5])
    assert (edited[:, 5:] - plain[:, 5:]).abs().amax(-1).min() > 0
    assert torch.equal(again, edited)


def test_nnsight_kv_state_edit(model):
    tokens = _tokens(10)
    value = torch.randn(2, 2, 21, 8)
    with torch.no_grad():
        want = model.run_with_hooks(tokens, fwd_hooks=[(MIX + "hook_kv_state", _edit([2], [value]))])
    wrapped = NNsight(model)
    with torch.no_grad(), wrapped.trace(tokens):
        S = wrapped.blocks[0].mixer.hook_kv_state.output.clone()
        S[:, 2] = value
        wrapped.blocks[0].mixer.hook_kv_state.output = S
        got = wrapped.output.save()
    assert torch.allclose(got, want, atol=1e-6)


def test_kv_state_gradient_is_the_total_derivative(model):
    """The gradient at the hooked S_r is what overriding S_r alone gives (the float64
    reference with S_r overridden by itself, differentiated)."""
    tokens = _tokens(11)
    names = [MIX + f"hook_{n}" for n in ("phi_q", "phi_k", "v")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    weight = torch.randn(2, 11, 2, 8, dtype=torch.float64)
    seen = {}

    def keep(S, hook):
        S.retain_grad()
        seen["S"] = S
        return S

    def readout(y, hook):
        seen["loss"] = (y.double() * weight).sum()
        return y

    model.run_with_hooks(tokens, fwd_hooks=[(MIX + "hook_kv_state", keep), (MIX + "hook_linear_out", readout)])
    seen["loss"].backward()
    model.zero_grad(set_to_none=True)
    phi_q, phi_k, v = (cache[n].double() for n in names)
    for r in (0, 6):
        S_r = kv_states(phi_k, v)[:, r].clone().requires_grad_(True)
        y, _, _ = linear_attention_reference(phi_q, phi_k, v, 1e-12, state_override={r: S_r})
        (y * weight).sum().backward()
        assert rel_err(seen["S"].grad[:, r], S_r.grad) < 1e-5


def test_no_window_and_config_errors():
    model = Based(vocab_size=V, d_model=16, n_layers=1, window=0)
    assert not any("window" in n for n in model.hook_dict)
    assert model(_tokens(0)).shape == (2, 11, V)
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=16"):
        Based(vocab_size=V, d_model=16, n_heads=3)
    with pytest.raises(ValueError, match="window must be >= 0"):
        Based(vocab_size=V, d_model=16, window=-1)
