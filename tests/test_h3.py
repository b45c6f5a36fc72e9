"""H3: the diagonal SSM's kernel and recurrence against the complex128 reference, the
FFT and recurrent views of the mixer held together, the shift SSM as a shift
register, and ssm-state edits that propagate like Mamba's."""

import pytest
import torch
from einops import rearrange
from nnsight import NNsight

import ssmlens.models.h3_ssm as h3_ssm
from ssmlens.kernels.fft_conv import causal_toeplitz, fft_causal_conv
from ssmlens.models import H3
from ssmlens.models.h3_ssm import DiagonalSSM, diagonal_ssm_reference, states_as_real, states_from_real

from helpers import rel_err

V = 24
MIX = "blocks.0.mixer."


@pytest.fixture(scope="module", params=[1, 2], ids=["head_dim1", "head_dim2"])
def model(request):
    torch.manual_seed(5)
    return H3(vocab_size=V, d_model=8, n_layers=2, d_state=6, head_dim=request.param).eval()


def _tokens(seed: int, b: int = 2, L: int = 12) -> torch.Tensor:
    return torch.randint(0, V, (b, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_and_recurrence_match_reference(seed):
    torch.manual_seed(seed)
    ssm = DiagonalSSM(5, 8, dt_min=0.01, dt_max=0.5)
    x = torch.randn(3, 17, 5)
    y_ref, h_ref = diagonal_ssm_reference(x, *ssm.discretize())
    with torch.no_grad():
        assert rel_err(fft_causal_conv(x, ssm.kernel(17)), y_ref) < 1e-5
        h = ssm.states(x)
        assert rel_err(torch.view_as_real(h), torch.view_as_real(h_ref)) < 1e-5
        assert rel_err(ssm.read(h), y_ref) < 1e-5


def test_real_layout_round_trip():
    h = torch.randn(2, 3, 4, dtype=torch.cfloat)
    real = states_as_real(h)
    assert real.shape == (2, 3, 8)
    assert torch.equal(real[..., 0], h[..., 0].real) and torch.equal(real[..., 1], h[..., 0].imag)
    assert torch.equal(states_from_real(real), h)


def test_fft_and_recurrent_views_agree(model):
    """Listening to hook_ssm_state switches the mixer from the FFT convolution to the
    recurrence; both give the same outputs."""
    tokens = _tokens(1)
    with torch.no_grad():
        _, fft = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_ssm_out"))
        _, rec = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_ssm_out", "hook_ssm_state")))
    for layer in range(2):
        name = f"blocks.{layer}.mixer.hook_ssm_out"
        assert rel_err(rec[name], fft[name]) < 1e-5


def test_states_and_outputs_match_reference(model):
    tokens = _tokens(2)
    mixer = model.blocks[0].mixer
    p = mixer.head_dim
    with torch.no_grad():
        names = [MIX + n for n in ("hook_kv", "hook_ssm_state", "hook_ssm_out")]
        _, cache = model.run_with_cache(tokens, names_filter=names)
        dA, dB, C = mixer.ssm.discretize()
    x = rearrange(cache[MIX + "hook_kv"], "b l (h i j) -> (b i j) l h", i=p, j=p)
    y_ref, h_ref = diagonal_ssm_reference(x, dA, dB, C)
    y_ref = y_ref + x.double() * mixer.D.double()
    assert rel_err(cache[MIX + "hook_ssm_out"], rearrange(y_ref, "(b i j) l h -> b l (h i j)", i=p, j=p)) < 1e-5
    want = rearrange(states_as_real(h_ref), "(b i j) l h n -> b l (h i j) n", i=p, j=p)
    assert rel_err(cache[MIX + "hook_ssm_state"], want) < 1e-5


def test_shift_ssm_is_a_shift_register(model):
    """k̃_t = C·x_t + D_shift·k_t with x_t = [k_t, k_{t−1}, …] (B = e₁, A = shift)."""
    tokens = _tokens(3)
    mixer = model.blocks[0].mixer
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[MIX + "hook_k", MIX + "hook_shift_out"])
    k = cache[MIX + "hook_k"].double()
    taps = mixer.shift_conv.weight[:, 0].flip(-1).double()  # d N
    register = torch.zeros(k.shape[0], k.shape[2], taps.shape[1], dtype=torch.float64)
    outs = []
    for t in range(k.shape[1]):
        register = torch.cat([k[:, t, :, None], register[..., :-1]], dim=-1)
        outs.append((register * taps).sum(-1) + mixer.D_shift.double() * k[:, t])
    assert rel_err(cache[MIX + "hook_shift_out"], torch.stack(outs, 1)) < 1e-5


def test_conv_kernels_reproduce_the_convolutions(model):
    tokens = _tokens(4)
    mixer = model.blocks[0].mixer
    L = tokens.shape[1]
    names = [MIX + n for n in ("hook_k", "hook_shift_out", "hook_kv", "hook_ssm_out")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
        kernels = mixer.conv_kernels(L)
    assert kernels["shift"].shape == (8, L) and kernels["ssm"].shape == (mixer.d_kv, L)
    for kind, src, dst in (("shift", "hook_k", "hook_shift_out"), ("ssm", "hook_kv", "hook_ssm_out")):
        T = causal_toeplitz(kernels[kind].double())  # c t s
        got = torch.einsum("cts,bsc->btc", T, cache[MIX + src].double())
        assert rel_err(got, cache[MIX + dst]) < 1e-5


def test_states_only_when_listened(model, monkeypatch):
    calls = []
    original = h3_ssm.DiagonalSSM.states
    monkeypatch.setattr(h3_ssm.DiagonalSSM, "states", lambda self, x: calls.append(1) or original(self, x))
    tokens = _tokens(5)
    with torch.no_grad():
        model.run_with_cache(tokens, names_filter=lambda n: "ssm_out" in n or "kv" in n)
        assert not calls
        model.run_with_cache(tokens, names_filter=MIX + "hook_ssm_state")
    assert len(calls) == 1


@pytest.mark.parametrize("positions", [[0], [5], [2, 8]])
def test_state_edit_matches_reference_override(model, positions):
    tokens = _tokens(6)
    mixer = model.blocks[0].mixer
    p = mixer.head_dim
    g = torch.Generator().manual_seed(len(positions) * 10 + positions[0])
    values = [torch.randn(2, mixer.d_kv, 6, generator=g) for _ in positions]

    def edit(h, hook):
        h = h.clone()
        for t, value in zip(positions, values):
            h[:, t] = value
        return h

    got = {}
    with torch.no_grad():
        _, plain = model.run_with_cache(tokens, names_filter=[MIX + "hook_kv", MIX + "hook_ssm_out"])
        model.run_with_hooks(tokens, fwd_hooks=[(MIX + "hook_ssm_state", edit),
                                                (MIX + "hook_ssm_out", lambda y, hook: got.setdefault("y", y))])
        dA, dB, C = mixer.ssm.discretize()
    x = rearrange(plain[MIX + "hook_kv"], "b l (h i j) -> (b i j) l h", i=p, j=p)
    override = {t: states_from_real(rearrange(v, "b (h i j) n -> (b i j) h n", i=p, j=p))
                for t, v in zip(positions, values)}
    y_ref, _ = diagonal_ssm_reference(x, dA, dB, C, state_override=override)
    y_ref = rearrange(y_ref + x.double() * mixer.D.double(), "(b i j) l h -> b l (h i j)", i=p, j=p)
    first = positions[0]
    assert rel_err(got["y"][:, :first], plain[MIX + "hook_ssm_out"][:, :first]) < 1e-5
    assert rel_err(got["y"][:, first:], y_ref[:, first:]) < 1e-5
    assert (got["y"][:, first:] - plain[MIX + "hook_ssm_out"][:, first:]).abs().max() > 1e-3


def test_in_place_and_nnsight_edits(model):
    tokens = _tokens(7)
    mixer = model.blocks[0].mixer
    value = torch.randn(2, mixer.d_kv, 6)

    def in_place(h, hook):
        h[:, 4] = value
        return h

    with torch.no_grad():
        plain = model(tokens)  # the FFT view
        ident = model.run_with_hooks(tokens, fwd_hooks=[(MIX + "hook_ssm_state", lambda h, hook: h)])  # recurrent
        edited = model.run_with_hooks(tokens, fwd_hooks=[(MIX + "hook_ssm_state", in_place)])
    # layer 1's FFT convolution mixes every position's rounding: equal before t to ~1e-7
    assert torch.allclose(edited[:, :4], ident[:, :4], atol=1e-6)
    assert torch.allclose(ident, plain, atol=1e-5)
    assert (edited[:, 4:] - plain[:, 4:]).abs().amax(-1).min() > 0
    wrapped = NNsight(model)
    with torch.no_grad(), wrapped.trace(tokens):
        h = wrapped.blocks[0].mixer.hook_ssm_state.output.clone()
        h[:, 4] = value
        wrapped.blocks[0].mixer.hook_ssm_state.output = h
        got = wrapped.output.save()
    assert torch.allclose(got, edited, atol=1e-5)


def test_state_gradient_is_the_total_derivative(model):
    """d(metric)/d(hooked h_r) = what overriding h_r alone gives (reference, complex128)."""
    tokens = _tokens(8)
    mixer = model.blocks[0].mixer
    p = mixer.head_dim
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[MIX + "hook_kv"])
    weight = torch.randn(2, 12, mixer.d_kv, dtype=torch.float64)
    seen = {}

    def keep(h, hook):
        h.retain_grad()
        seen["h"] = h
        return h

    def readout(y, hook):
        seen["loss"] = (y.double() * weight).sum()
        return y

    model.run_with_hooks(tokens, fwd_hooks=[(MIX + "hook_ssm_state", keep), (MIX + "hook_ssm_out", readout)])
    seen["loss"].backward()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        dA, dB, C = mixer.ssm.discretize()
    x = rearrange(cache[MIX + "hook_kv"], "b l (h i j) -> (b i j) l h", i=p, j=p)
    _, h_ref = diagonal_ssm_reference(x, dA, dB, C)
    for r in (1, 7):
        real = rearrange(states_as_real(h_ref[:, r]), "(b i j) h n -> b (h i j) n", i=p, j=p)
        real = real.clone().requires_grad_(True)
        over = states_from_real(rearrange(real, "b (h i j) n -> (b i j) h n", i=p, j=p)).to(torch.complex128)
        y, _ = diagonal_ssm_reference(x, dA, dB, C, state_override={r: over})
        (rearrange(y, "(b i j) l h -> b l (h i j)", i=p, j=p) * weight).sum().backward()
        assert rel_err(seen["h"].grad[:, r], real.grad) < 1e-4


def test_config_errors():
    with pytest.raises(ValueError, match="d_state must be even"):
        H3(vocab_size=V, d_model=8, d_state=5)
    with pytest.raises(ValueError, match="head_dim=3"):
        H3(vocab_size=V, d_model=8, head_dim=3)
