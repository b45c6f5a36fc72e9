"""Token-mixing views (ssmlens.probes.mixing): each matrix, applied to its values and
passed through the mixer's projection, reproduces the mixer's hooked output to 1e-5
on fresh random weights and tokens; the selective-scan matrix equals its loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from every_model import build_small
from helpers import rel_err

from ssmlens.models import BMojo, BMojoConfig, Mamba, MoEMamba, Transformer
from ssmlens.probes.mixing import find_mixer, register_mixing, registered_mixers, token_mixing
from ssmlens.probes.mixing_selective import (
    implicit_attention, implicit_attention_reference, selective_mixing, selective_mixing_reference,
)

V = 40


def tokens(b=3, L=17, seed=1):
    return torch.randint(0, V, (b, L), generator=torch.Generator().manual_seed(seed))


def bmojo(seed, **kw):
    torch.manual_seed(seed)
    m = BMojo(BMojoConfig(vocab_size=V, d_model=16, n_layers=2, n_heads=4, d_state=4, window=4, memory_size=3,
                          threshold=1.0, scan_backend="torch", **kw))
    for block in m.blocks:  # a trained-like predictor, so that some tokens are written and some not
        torch.nn.init.normal_(block.memory.W_p, std=0.3)
    return m.eval()


def models():
    torch.manual_seed(0)
    yield "transformer", Transformer(vocab_size=V, d_model=16, n_layers=2, n_heads=4).eval()
    yield "transformer-rotary", Transformer(vocab_size=V, d_model=16, n_layers=2, n_heads=2, positional="rotary").eval()
    yield "mamba", Mamba(vocab_size=V, d_model=16, n_layers=2, d_state=4, scan_backend="torch").eval()
    yield "moe_mamba", MoEMamba(vocab_size=V, d_model=16, n_layers=2, d_state=4, n_experts=3,
                                scan_backend="torch").eval()
    yield "bmojo", bmojo(1)
    yield "bmojo-no-ssm", bmojo(2, use_ssm=False)
    # the zoo and Mamba-2 (fresh random weights; tests/every_model.py's small settings)
    yield "based", build_small("based", seed=3)
    yield "based-2heads-no-window", build_small("based", seed=4, n_heads=2, feature_dim=4, window=0)
    yield "h3", build_small("h3", seed=5)
    yield "h3-head_dim2", build_small("h3", seed=6, head_dim=2)
    yield "hyena", build_small("hyena", seed=7, l_max=24)
    yield "hyena-order3", build_small("hyena", seed=8, l_max=24, order=3)
    yield "mamba2", build_small("mamba2", seed=9)
    yield "mamba2-2groups", build_small("mamba2", seed=10, n_groups=2)


@pytest.mark.parametrize("name,model", list(models()), ids=[n for n, _ in models()])
def test_every_matrix_reproduces_its_mixer_output(name, model):
    x = tokens()
    for layer in range(2):
        res = token_mixing(model, x, layer)
        b, L = x.shape
        assert res.matrix.shape[0] == b and res.matrix.shape[2] == L and res.matrix.shape[3] >= L
        assert rel_err(res.reproduce(), res.output) < 1e-5, (name, layer)
        # causal: no query gives weight to a later token
        assert float(res.matrix[..., :L].triu(1).abs().max()) == 0.0
    if res.kind in ("softmax_attention", "bmojo_attention", "based"):
        # softmax rows sum to one (B'MOJO: or zero, for rows that see nothing); Based's linear
        # rows to n_t / (n_t + ε), with n_t the model's float32 normalizer
        sums = res.matrix.sum(-1)
        tol = 1e-5 if res.kind == "based" else 1e-9
        assert torch.all(((sums - 1).abs() < tol) | ((sums == 0) & name.startswith("bmojo")))
        assert not res.signed


def test_bmojo_columns_are_window_memory_and_fading():
    model = bmojo(3)
    x = tokens(L=20, seed=4)
    res = token_mixing(model, x, 1)
    assert res.column_labels[-1] == "fading" and res.matrix.shape[-1] == 21
    _, cache = model.run_with_cache(x, names_filter=["blocks.1.attn.hook_pattern"])
    pattern = cache["blocks.1.attn.hook_pattern"].double()
    torch.testing.assert_close(res.matrix, pattern, rtol=1e-5, atol=1e-6)
    old = res.matrix[..., :20].tril(-4)  # outside the 4-token window: only memory columns
    assert float(old.abs().sum()) > 0, "the memory held something (else this test checks nothing)"


def test_bmojo_ssm_view_is_the_mamba_view():
    model = bmojo(5)
    res = token_mixing(model, tokens(), 0, slot="mixer")
    assert res.kind == "selective_scan" and rel_err(res.reproduce(), res.output) < 1e-5


def test_selective_mixing_equals_its_loop_with_long_fast_decays():
    g = torch.Generator().manual_seed(2)
    b, L, d, n = 2, 41, 3, 4
    delta = torch.nn.functional.softplus(torch.randn(b, L, d, generator=g)) * 30  # decays far below e^-600
    A = -torch.exp(torch.randn(d, n, generator=g))
    B, C = torch.randn(b, L, n, generator=g), torch.randn(b, L, n, generator=g)
    fast, ref = selective_mixing(delta, A, B, C), selective_mixing_reference(delta, A, B, C)
    torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(fast).all()
    ia = implicit_attention(delta[0].numpy(), A.numpy(), B[0].numpy(), C[0].numpy())
    np.testing.assert_allclose(ia, implicit_attention_reference(delta[0], A, B[0], C[0]), rtol=1e-9, atol=1e-12)


def test_ssd_mixing_equals_its_loop_and_the_selective_scan_view():
    from ssmlens.probes.mixing_mamba2 import ssd_mixing, ssd_mixing_reference

    g = torch.Generator().manual_seed(3)
    b, L, H, G, n = 2, 23, 4, 2, 3
    delta = torch.nn.functional.softplus(torch.randn(b, L, H, generator=g)) * 40  # decays far below e^-600
    A = -torch.exp(torch.randn(H, generator=g))
    B, C = torch.randn(b, L, G, n, generator=g), torch.randn(b, L, G, n, generator=g)
    fast = ssd_mixing(delta, A, B, C)
    torch.testing.assert_close(fast, ssd_mixing_reference(delta, A, B, C), rtol=1e-9, atol=1e-12)
    assert torch.isfinite(fast).all()
    # Mamba-2 is the Mamba-1 scan with A constant over the state and B, C shared by a group
    for h in range(H):
        one = selective_mixing(delta[..., h:h + 1], A[h].expand(1, n), B[:, :, h // 2], C[:, :, h // 2])
        torch.testing.assert_close(fast[:, h:h + 1], one, rtol=1e-9, atol=1e-12)


def test_based_groups_are_its_linear_and_window_heads():
    model = build_small("based", seed=11, n_heads=2, feature_dim=4, window=3)
    x = tokens(b=2, L=12)
    res = token_mixing(model, x, 1)
    assert res.group_labels == ["linear.h0", "linear.h1", "window.h0", "window.h1"]
    _, cache = model.run_with_cache(x, names_filter=["blocks.1.mixer.hook_window_pattern",
                                                     "blocks.1.mixer.hook_normalizer"])
    torch.testing.assert_close(res.matrix[:, 2:], cache["blocks.1.mixer.hook_window_pattern"].double(),
                               rtol=1e-5, atol=1e-7)
    n = cache["blocks.1.mixer.hook_normalizer"].double().permute(0, 2, 1)  # b h q
    torch.testing.assert_close(res.matrix[:, :2].sum(-1), n / (n + model.cfg.eps), rtol=1e-5, atol=1e-7)
    assert float(res.matrix[:, :2, -1, 0].min()) > 0  # linear attention keeps the first token (no decay)


def test_h3_kernel_is_its_ssm_impulse_response():
    from ssmlens.models.h3_ssm import diagonal_ssm_reference

    model = build_small("h3", seed=12, head_dim=2)
    x = tokens(b=2, L=10)
    res = token_mixing(model, x, 0)
    mixer = model.blocks[0].mixer
    impulse = torch.zeros(1, 10, mixer.n_heads)
    impulse[0, 0] = 1
    response, _ = diagonal_ssm_reference(impulse, *mixer.ssm.discretize())  # [1, L, head]: the kernel, lag ≥ 0
    kernel = response[0].T.clone()
    kernel[:, 0] += mixer.D.detach().double()  # the skip D acts at lag 0
    T = res.parts["kernel"]
    for lag in range(10):
        torch.testing.assert_close(torch.diagonal(T, -lag, dim1=1, dim2=2),
                                   kernel[:, lag:lag + 1].expand(-1, 10 - lag), rtol=1e-4, atol=1e-6)
    scores = torch.einsum("bthi,bshi->bhts", res.parts["q"], res.parts["k_shift"])
    torch.testing.assert_close(res.matrix, T[None] * scores)


def test_hyena_matrix_is_its_gated_toeplitz_product():
    model = build_small("hyena", seed=13, l_max=12)
    x = tokens(b=1, L=12)
    res = token_mixing(model, x, 1)
    T1, T2, x1, x2 = (res.parts[k] for k in ("T1", "T2", "x1", "x2"))
    c = 5  # one channel by hand: diag(x2) T2 diag(x1) T1
    by_hand = torch.diag(x2[0, :, c]) @ T2[c] @ torch.diag(x1[0, :, c]) @ T1[c]
    torch.testing.assert_close(res.matrix[0, c], by_hand)
    # the filters alone do not depend on the input; lag 0 holds the skip β
    h = model.blocks[1].mixer.filter
    expected0 = (h.filters(12)[0, c, 0] + h.bias[0, c]).detach()
    assert float(T1[c, 3, 3]) == pytest.approx(float(expected0), rel=1e-6)


def test_lookup_errors_name_the_registered_mixers():
    assert {"Attention", "BMojoAttention", "MambaMixer", "Mamba2Mixer", "BasedMixer", "H3Mixer",
            "HyenaMixer"} <= set(registered_mixers())

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="registered mixers: .*MambaMixer"):
        find_mixer(Block())
    with pytest.raises(ValueError, match="out of range"):
        token_mixing(Mamba(vocab_size=V, d_model=8, n_layers=1), tokens(), 3)


def test_registration_by_class_reaches_subclasses():
    class Special(torch.nn.Linear):
        pass

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = Special(2, 2)

    calls = []
    register_mixing(torch.nn.Linear)(lambda *a: calls.append(a))
    try:
        assert find_mixer(Block())[0] == "mixer"
    finally:
        from ssmlens.probes import mixing

        mixing._REGISTRY.pop(torch.nn.Linear)
