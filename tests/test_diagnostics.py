"""Stability and memory diagnostics (ssmlens.probes.diagnostics) on known Δ and A, and on a
model whose Δ is made input-independent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssmlens.models import BMojo, Mamba, MoEMamba, Transformer
from ssmlens.probes.diagnostics import QUANTILES, layer_diagnostics, model_diagnostics


def test_known_delta_and_A():
    # Δ constant per channel (0.5, 2.0), A with one slow and one fast state per channel
    delta = torch.tensor([0.5, 2.0]).expand(3, 4, 2).clone()
    A = -torch.tensor([[0.25, 4.0], [1.0, 8.0]])
    d = layer_diagnostics(delta, A, layer=1)
    np.testing.assert_allclose(d.horizon, [1 / (0.5 * 0.25), 1 / (2.0 * 1.0)])  # 8 and 0.5 tokens
    assert d.abscissa == -0.25 and list(d.channel_abscissa) == [-0.25, -1.0]
    # the slowest direction per token: exp(-0.5 * 0.25) everywhere
    np.testing.assert_allclose(d.radius, np.full(4, math.exp(-0.125)))
    rates = np.array([0.125, 2.0, 2.0, 16.0])  # Δ·|A| over channels × states (each the same share)
    np.testing.assert_allclose(d.decay_quantiles, np.quantile(np.repeat(rates, 12), QUANTILES))
    assert d.delta_token_var == 0.0 and d.delta_channel_var == pytest.approx((math.log(4) / 2) ** 2)
    assert d.input_share == 0.0


def test_input_share_grows_with_token_dependence():
    g = torch.Generator().manual_seed(0)
    channel = torch.randn(8, generator=g)  # per-channel offsets of log Δ
    A = -torch.ones(8, 2)
    by_channel = layer_diagnostics(torch.exp(channel).expand(4, 16, 8), A)
    by_token = layer_diagnostics(torch.exp(channel * 0.01 + 3 * torch.randn(4, 16, 8, generator=g)), A)
    assert by_channel.input_share == 0.0 and by_token.input_share > 0.95
    with pytest.raises(ValueError, match="delta must be > 0"):
        layer_diagnostics(torch.zeros(1, 2, 8), A)
    with pytest.raises(ValueError, match="same d_inner"):
        layer_diagnostics(torch.ones(1, 2, 8), -torch.ones(4, 2))


def test_model_with_input_independent_delta():
    torch.manual_seed(0)
    model = Mamba(vocab_size=20, d_model=16, n_layers=2, d_state=4).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.dt_proj.weight.zero_()  # Δ = softplus(bias): the same at every token
    tokens = torch.randint(0, 20, (3, 9))
    diags = model_diagnostics(model, tokens)
    assert [d.layer for d in diags] == [0, 1]
    for d, block in zip(diags, model.blocks):
        mixer = block.mixer
        dt = F.softplus(mixer.dt_proj.bias.detach().double())
        expected = 1 / (dt * mixer.A.detach().double().abs().min(-1).values)
        np.testing.assert_allclose(d.horizon, expected.numpy(), rtol=1e-6)
        assert d.abscissa == pytest.approx(float(mixer.A.detach().max()))
        assert d.delta_token_var < 1e-12 and d.input_share < 1e-9
        assert d.delta_channel_var == pytest.approx(float(dt.log().var(unbiased=False)), rel=1e-6)


def test_which_models_have_diagnostics():
    torch.manual_seed(0)
    x = torch.randint(0, 20, (2, 7))
    assert model_diagnostics(Transformer(vocab_size=20, d_model=16, n_layers=2, n_heads=2), x) == []
    assert len(model_diagnostics(MoEMamba(vocab_size=20, d_model=16, n_layers=2, d_state=4, n_experts=2), x)) == 2
    assert len(model_diagnostics(BMojo(vocab_size=20, d_model=16, n_layers=2, n_heads=2, d_state=4), x)) == 2


def test_mamba2_diagnostics_are_per_head():
    from every_model import build_small

    model = build_small("mamba2", seed=0)
    x = torch.randint(0, 40, (3, 9))
    diags = model_diagnostics(model, x)
    _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_delta"))
    for d, block in zip(diags, model.blocks):
        delta = cache[f"blocks.{d.layer}.mixer.hook_delta"].double()  # [b, L, head]
        A = block.mixer.A.detach().double()
        assert d.group == "head" and d.horizon.shape == (block.mixer.cfg.n_heads,)
        np.testing.assert_allclose(d.horizon, (1 / (delta.mean((0, 1)) * A.abs())).numpy(), rtol=1e-6)
        assert d.abscissa == pytest.approx(float(A.max())) and d.abscissa < 0
        assert 0 < d.input_share < 1


def test_h3_spectrum_is_its_fixed_ssm():
    from every_model import build_small

    model = build_small("h3", seed=1)
    x = torch.randint(0, 40, (2, 7))
    diags = model_diagnostics(model, x)
    assert [d.layer for d in diags] == [0, 1] and all(d.kind == "lti" for d in diags)
    for d, block in zip(diags, model.blocks):
        ssm = block.mixer.ssm
        dA, _, _ = ssm.discretize()
        # the slowest mode's e-folding time, from |Ā| of the bilinear discretization by hand
        dt = ssm.log_dt.detach().double().exp()[:, None]
        A = torch.complex(-ssm.A_re_log.detach().double().exp(), ssm.A_im.detach().double())
        by_hand = ((1 + dt * A / 2) / (1 - dt * A / 2)).abs()
        np.testing.assert_allclose(d.horizon, (1 / (-torch.log(by_hand)).min(-1).values).numpy(), rtol=1e-9)
        np.testing.assert_allclose(np.abs(dA.detach().numpy()), by_hand.numpy(), rtol=1e-5)  # the model's Ā
        assert d.abscissa == pytest.approx(-0.5, rel=1e-6)  # S4D-Lin's Re A = −1/2, untrained
        assert d.delta_token_var == 0.0 and d.input_share == 0.0 and d.delta_channel_var > 0
        np.testing.assert_allclose(d.radius, np.full(7, float(by_hand.max())), rtol=1e-9)


def test_hyena_horizon_is_its_filters_mass_lag():
    from every_model import build_small

    from ssmlens.probes.diagnostics_hyena import mass_horizon

    tau = torch.tensor([0.6, 4.5, 11.7], dtype=torch.float64)  # ⌈τ⌉ = 1, 5, 12 (no ties)
    lags = torch.arange(400, dtype=torch.float64)
    # (sign and scale do not matter)
    h = torch.exp(-lags / tau[:, None]) * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)[:, None]
    np.testing.assert_allclose(mass_horizon(h).numpy(), [1, 5, 12])
    flat = torch.ones(1, 100)  # no decay: 1 − 1/e of the mass takes 64 of 100 lags
    assert float(mass_horizon(flat)) == 64

    model = build_small("hyena", seed=2, l_max=30)
    x = torch.randint(0, 40, (2, 30))
    diags = model_diagnostics(model, x)
    assert len(diags) == 2 and diags[0].kind == "filter"
    for d, block in zip(diags, model.blocks):
        filters = block.mixer.filter.filters(30).detach()
        np.testing.assert_allclose(d.horizon, mass_horizon(filters).flatten().numpy())
        assert d.horizon.shape == (2 * 16,) and np.all((d.horizon >= 1) & (d.horizon <= 30))
        assert np.isnan(d.abscissa) and np.isnan(d.input_share)


def test_based_and_attention_have_no_diagnostics():
    from every_model import build_small

    from ssmlens.probes.diagnostics import registered_diagnostics

    assert {"MambaMixer", "Mamba2Mixer", "H3Mixer", "HyenaMixer"} <= set(registered_diagnostics())
    assert model_diagnostics(build_small("based"), torch.randint(0, 40, (1, 6))) == []
