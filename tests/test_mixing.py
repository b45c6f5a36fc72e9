"""Token-mixing views (ssmlens.probes.mixing): each matrix, applied to its values and
passed through the mixer's projection, reproduces the mixer's hooked output to 1e-5
on fresh random weights and tokens; the selective-scan matrix equals its loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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
    if res.group == "head":  # softmax rows sum to one (B'MOJO: or zero, for rows that see nothing)
        sums = res.matrix.sum(-1)
        assert torch.all(((sums - 1).abs() < 1e-9) | ((sums == 0) & name.startswith("bmojo")))


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


def test_lookup_errors_name_the_registered_mixers():
    assert {"Attention", "BMojoAttention", "MambaMixer"} <= set(registered_mixers())

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
