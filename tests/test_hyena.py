"""Hyena: the FFT long convolution against the direct causal convolution, the implicit
filters (shape, prefix, decay), filter edits that change the convolution, and the
whole operator against a float64 direct reference."""

import pytest
import torch
from nnsight import NNsight

from ssmlens.kernels.fft_conv import causal_conv_reference, causal_toeplitz, fft_causal_conv
from ssmlens.models import Hyena

from helpers import rel_err

V = 24
MIX = "blocks.0.mixer."


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(7)
    return Hyena(vocab_size=V, d_model=8, n_layers=2, l_max=16, filter_width=16).eval()


def _tokens(seed: int, b: int = 2, L: int = 12) -> torch.Tensor:
    return torch.randint(0, V, (b, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("L,lags", [(1, 1), (7, 7), (16, 16), (33, 50), (20, 3)])
def test_fft_conv_matches_direct_convolution(L, lags):
    g = torch.Generator().manual_seed(L * 100 + lags)
    x, k = torch.randn(3, L, 5, generator=g), torch.randn(5, lags, generator=g)
    assert rel_err(fft_causal_conv(x, k), causal_conv_reference(x, k)) < 1e-5
    T = causal_toeplitz(k.double(), L)
    assert rel_err(torch.einsum("cts,bsc->btc", T, x.double()), causal_conv_reference(x, k)) < 1e-12


def test_fft_conv_gradients_and_bf16():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fft_causal_conv, (x, k))
    xb, kb = x.detach().bfloat16(), k.detach().bfloat16()
    out = fft_causal_conv(xb, kb)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, causal_conv_reference(xb, kb)) < 1e-2
    bad = x.detach().clone()
    bad[0, 4, 1], bad[1, 2, 0] = float("nan"), float("inf")
    got, want = fft_causal_conv(bad, k.detach()), causal_conv_reference(bad, k.detach())
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    assert got[0, 4:, 1].isnan().all() and not got[0, :4].isnan().any()
    finite = want.isfinite()
    assert rel_err(got[finite], want[finite]) < 1e-12


def test_fft_conv_checks_shapes():
    with pytest.raises(ValueError, match=r"kernel must be \[channel=3, lag\]"):
        fft_causal_conv(torch.zeros(1, 4, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"x must be \[batch, pos, channel\]"):
        fft_causal_conv(torch.zeros(4, 3), torch.zeros(3, 4))


def test_filters_shape_prefix_and_decay(model):
    mixer = model.blocks[0].mixer
    with torch.no_grad():
        _, cache = model.run_with_cache(_tokens(1), names_filter=MIX + "hook_filter")
        h16 = mixer.filter.filters(16)
    h = cache[MIX + "hook_filter"]
    assert h.shape == (2, 8, 12)
    assert torch.equal(h, h16[..., :12])  # a prefix sees the same filters
    # the modulation: the last channel decays fastest (exp(−t·|δ|) with |δ| increasing)
    decay = torch.exp(-mixer.filter.t[:, 0] * mixer.filter.deltas.abs()[:, None])
    assert decay[-1, -1] < 0.01 < decay[0, -1]
    with pytest.raises(ValueError, match="exceeds Hyena's l_max=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def _direct_operator(cache, h, bias, order: int):
    """The Hyena recurrence in float64 with direct causal convolutions."""
    z = cache[MIX + "hook_v"].double()
    outs = []
    for n in range(order):
        conv = causal_conv_reference(z, h[n]) + bias[n].double() * z
        outs.append(conv)
        z = cache[MIX + f"hook_x{n + 1}"].double() * conv
    return outs, z


def test_operator_matches_direct_reference(model):
    mixer = model.blocks[0].mixer
    names = [MIX + n for n in ("hook_x1", "hook_x2", "hook_v", "hook_filter", "hook_conv_out_1", "hook_conv_out_2",
                               "hook_out")]
    with torch.no_grad():
        _, cache = model.run_with_cache(_tokens(2), names_filter=names)
    outs, z = _direct_operator(cache, cache[MIX + "hook_filter"], mixer.filter.bias.detach(), 2)
    for n in (1, 2):
        assert rel_err(cache[MIX + f"hook_conv_out_{n}"], outs[n - 1]) < 1e-5
    want = z @ mixer.out_proj.weight.double().T + mixer.out_proj.bias.double()
    assert rel_err(cache[MIX + "hook_out"], want) < 1e-5


@pytest.mark.parametrize("kind", ["truncate", "random"])
def test_filter_edit_changes_the_convolution(model, kind):
    """An edit of hook_filter is the filter the convolutions use: the outputs equal the
    direct convolutions with the edited filters."""
    mixer = model.blocks[0].mixer
    g = torch.Generator().manual_seed(3)

    def edit(h, hook):
        if kind == "truncate":
            return h * (torch.arange(h.shape[-1]) < 2)
        return torch.randn(h.shape, generator=g)

    got = {}
    names = [MIX + n for n in ("hook_x1", "hook_x2", "hook_v", "hook_conv_out_1", "hook_conv_out_2")]
    with torch.no_grad():
        _, plain = model.run_with_cache(_tokens(3), names_filter=names + [MIX + "hook_filter"])
        edit_hook = (MIX + "hook_filter", lambda h, hook: got.setdefault("h", edit(h, hook)))
        model.run_with_hooks(_tokens(3), fwd_hooks=[edit_hook] + [(n, lambda x, hook: got.setdefault(hook.name, x))
                                                                   for n in names])
    outs, _ = _direct_operator(got, got["h"], mixer.filter.bias.detach(), 2)
    for n in (1, 2):
        assert rel_err(got[MIX + f"hook_conv_out_{n}"], outs[n - 1]) < 1e-5
    assert (got[MIX + "hook_conv_out_1"] - plain[MIX + "hook_conv_out_1"]).abs().max() > 1e-3


def test_nnsight_filter_edit(model):
    tokens = _tokens(4)

    def truncate(h, hook):
        return h * (torch.arange(h.shape[-1]) < 3)

    with torch.no_grad():
        want = model.run_with_hooks(tokens, fwd_hooks=[(MIX + "hook_filter", truncate)])
    wrapped = NNsight(model)
    with torch.no_grad(), wrapped.trace(tokens):
        h = wrapped.blocks[0].mixer.hook_filter.output
        wrapped.blocks[0].mixer.hook_filter.output = h * (torch.arange(12) < 3)
        got = wrapped.output.save()
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, model(tokens), atol=1e-4)


def test_conv_kernels_reproduce_the_long_convolutions(model):
    mixer = model.blocks[0].mixer
    names = [MIX + n for n in ("hook_v", "hook_x1", "hook_conv_out_1", "hook_conv_out_2")]
    with torch.no_grad():
        _, cache = model.run_with_cache(_tokens(5), names_filter=names)
        kernels = mixer.conv_kernels(12)
    assert set(kernels) == {"h1", "h2"} and kernels["h1"].shape == (8, 12)
    z = cache[MIX + "hook_v"].double()
    for n in (1, 2):
        got = torch.einsum("cts,bsc->btc", causal_toeplitz(kernels[f"h{n}"].double()), z)
        assert rel_err(got, cache[MIX + f"hook_conv_out_{n}"]) < 1e-5
        z = cache[MIX + "hook_x1"].double() * got


def test_order_three_and_config_errors():
    model = Hyena(vocab_size=V, d_model=8, n_layers=1, order=3, l_max=16, filter_width=8)
    _, cache = model.run_with_cache(_tokens(6), names_filter=lambda n: "filter" in n or "x3" in n)
    assert cache[MIX + "hook_filter"].shape == (3, 8, 12)
    assert cache[MIX + "hook_x3"].shape == (2, 12, 8)
    with pytest.raises(ValueError, match="filter_emb_dim must be odd"):
        Hyena(vocab_size=V, d_model=8, filter_emb_dim=4)
    with pytest.raises(ValueError, match="order must be >= 1"):
        Hyena(vocab_size=V, d_model=8, order=0)
