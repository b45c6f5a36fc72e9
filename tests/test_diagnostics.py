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
