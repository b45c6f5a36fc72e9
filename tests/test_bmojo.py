"""B'MOJO: special cases of DESIGN §4, causality, memory semantics, write edits."""

from __future__ import annotations

import math
import os

import pytest
import torch

from ssmlens.models import registry
from ssmlens.models.bmojo import BMojo, BMojoConfig, split_pattern
from ssmlens.models.bmojo_memory import innovation_error, memory_mask, memory_mask_reference, window_mask
from ssmlens.models.mamba import Mamba
from ssmlens.models.transformer import Transformer

SMALL = dict(vocab_size=50, d_model=16, n_layers=2, n_heads=4, d_state=4, scan_backend="torch")


def bmojo(seed=0, **kw) -> BMojo:
    torch.manual_seed(seed)
    m = BMojo(BMojoConfig(**{**SMALL, "threshold": 1.0, **kw}))
    # random W_p, so that the innovation test is not the trivial zero-init one
    for block in m.blocks:
        torch.nn.init.normal_(block.memory.W_p, std=0.3)
    return m.eval()


def tokens(b=2, L=20, seed=1):
    return torch.randint(0, 50, (b, L), generator=torch.Generator().manual_seed(seed))


def close(a, b, rtol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.detach().abs().max()))


def names(model, suffix):
    return [n for n in model.hook_dict if n.endswith(suffix)]


# -- special cases ----------------------------------------------------------------
@pytest.mark.parametrize("window", [20, 100])
def test_window_covers_all_no_ssm_no_memory_is_a_causal_transformer(window):
    torch.manual_seed(0)
    tf = Transformer(vocab_size=50, d_model=16, n_layers=2, n_heads=4, positional="rotary", norm="layer").eval()
    bm = bmojo(window=window, memory_size=0, use_ssm=False, norm="layer", tie_embeddings=False)
    missing, unexpected = bm.load_state_dict(tf.state_dict(), strict=False)
    assert unexpected == [] and all(k.endswith("memory.W_p") for k in missing)
    x = tokens(L=20)
    close(bm(x), tf(x))  # fused path
    with torch.no_grad():
        (out, cache), (ref, ref_cache) = bm.run_with_cache(x), tf.run_with_cache(x)
    close(out, ref)  # explicit path, pattern materialized
    pat = cache["blocks.1.attn.hook_pattern"]
    close(pat[..., :20], ref_cache["blocks.1.attn.hook_pattern"])
    assert float(pat[..., 20].abs().max()) == 0  # no SSM: the fading column is never seen


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_attention_removed_is_the_mamba_mixer_path(backend):
    torch.manual_seed(0)
    mb = Mamba(vocab_size=50, d_model=16, n_layers=2, d_state=4, scan_backend=backend).eval()
    bm = bmojo(window=0, memory_size=0, use_attention=False, d_mlp=0, scan_backend=backend,
                tie_embeddings=True)  # as the Mamba it is compared with
    state = {k.replace(".norm.", ".ln1."): v for k, v in mb.state_dict().items()}
    missing, unexpected = bm.load_state_dict(state, strict=False)
    assert unexpected == [] and all(k.endswith("memory.W_p") for k in missing)
    x = tokens()
    close(bm(x), mb(x))
    # with an MLP the block is resid + f, then + MLP
    bm2 = bmojo(window=0, memory_size=0, use_attention=False, scan_backend=backend)
    block, resid = bm2.blocks[0], torch.randn(2, 20, 16)
    mid = resid + block.mixer(block.ln1(resid))
    close(block(resid), mid + block.mlp(block.ln2(mid)))


def test_window_zero_memory_zero_attends_only_to_the_fading_token():
    bm = bmojo(window=0, memory_size=0)
    x = tokens()
    with torch.no_grad():
        out, cache = bm.run_with_cache(x)
        pat = cache["blocks.0.attn.hook_pattern"]
        assert float(pat[..., :-1].abs().max()) == 0 and torch.allclose(pat[..., -1], torch.ones(()))
        attn = bm.blocks[0].attn
        f = cache["blocks.0.memory.hook_fading"]
        close(cache["blocks.0.attn.hook_out"], attn.W_O(attn.W_V(f)))
        close(bm(x), out)


# -- causality ---------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(window=3, memory_size=2), dict(window=0, memory_size=4),
                                dict(window=2, memory_size=3, use_ssm=False), dict(window=5, memory_size=0)])
def test_perturbing_token_t_changes_nothing_before_t(kw):
    model = bmojo(seed=3, **kw)
    x = tokens(L=24, seed=4)
    watch = names(model, "memory.hook_innovation") + names(model, "memory.hook_write")
    with torch.no_grad():
        base, base_cache = model.run_with_cache(x, names_filter=watch)
        fused = model(x)
        writes = torch.stack([base_cache[n] for n in names(model, "hook_write")])
        assert 0 < float(writes.mean()) < 1  # the write decisions are not trivial
        for t in (1, 7, 15, 23):
            y = x.clone()
            y[:, t] = (y[:, t] + 11) % 50
            out, cache = model.run_with_cache(y, names_filter=watch)
            close(out[:, :t], base[:, :t], rtol=1e-6)
            close(model(y)[:, :t], fused[:, :t], rtol=1e-6)
            for n in watch:
                assert torch.equal(cache[n][:, :t], base_cache[n][:, :t]), (n, t)
            assert not torch.allclose(out[:, t], base[:, t])  # the test can see a change


# -- memory semantics ------------------------------------------------------------
def test_memory_selection_on_a_hand_built_example():
    write = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 0]], dtype=torch.float32)
    m = memory_mask(write, window=2, memory_size=2)[0]
    assert m[7].nonzero().flatten().tolist() == [2, 3]  # written ≤ 5: {0, 2, 3}; two most recent
    assert m[4].nonzero().flatten().tolist() == [0, 2]
    assert m[2].nonzero().flatten().tolist() == [0]
    assert m[1].nonzero().flatten().tolist() == []
    assert window_mask(8, 2)[5].nonzero().flatten().tolist() == [4, 5]
    for window, size in [(0, 1), (0, 3), (2, 2), (3, 5), (9, 2), (1, 0)]:
        w = (torch.rand(3, 12, generator=torch.Generator().manual_seed(window + size)) > 0.5).float()
        assert torch.equal(memory_mask(w, window, size), memory_mask_reference(w, window, size))


def test_large_threshold_writes_nothing():
    model = bmojo(window=3, memory_size=4, threshold=1e9)
    plain = bmojo(window=3, memory_size=0)
    plain.load_state_dict(model.state_dict())
    x = tokens()
    with torch.no_grad():
        out, cache = model.run_with_cache(x)
        for l in range(2):
            assert float(cache[f"blocks.{l}.memory.hook_write"].abs().max()) == 0
            assert float(model.split_pattern(cache, l).memory.abs().max()) == 0
        close(out, plain(x))


@pytest.mark.parametrize("memory_size", [3, 100])
def test_threshold_minus_inf_keeps_the_most_recent_tokens_older_than_the_window(memory_size):
    w, L = 2, 12
    model = bmojo(window=w, memory_size=memory_size, threshold=-math.inf)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(L=L))
    assert torch.equal(cache["blocks.0.memory.hook_write"], torch.ones(2, L))
    parts = model.split_pattern(cache, 0)
    for t in range(L):
        expected = list(range(max(0, t - w - memory_size + 1), max(0, t - w + 1)))
        seen = (parts.memory[:, :, t] > 0).all(0).all(0).nonzero().flatten().tolist()
        assert seen == expected, t
        assert (parts.window[:, :, t] > 0).all(0).all(0).nonzero().flatten().tolist() == list(range(max(0, t - w + 1), t + 1))
    total = parts.window.sum(-1) + parts.memory.sum(-1) + parts.fading
    close(total, torch.ones_like(total))


def test_forcing_a_write_shows_the_token_only_to_queries_outside_its_window():
    w, s, L = 3, 4, 14
    model = bmojo(window=w, memory_size=2, threshold=math.inf, n_layers=1)
    x = tokens(L=L)

    def force(write, hook):
        write = write.clone()
        write[:, s] = 1.0
        return write

    with torch.no_grad():
        base, base_cache = model.run_with_cache(x)
        with model.hooks(fwd_hooks=[("blocks.0.memory.hook_write", force)]):
            out, cache = model.run_with_cache(x)
            fused = model(x)
    close(fused, out)
    mem = model.split_pattern(cache, 0).memory  # b h q k
    assert float(model.split_pattern(base_cache, 0).memory.abs().max()) == 0
    assert bool((mem[:, :, s + w :, s] > 0).all())  # visible from the first query outside its window
    assert float(mem[:, :, : s + w].abs().max()) == 0
    assert float(mem[..., torch.arange(L) != s].abs().max()) == 0  # and nothing else entered memory
    assert torch.equal(out[:, : s + w], base[:, : s + w])  # earlier queries see no change
    assert not torch.allclose(out[:, s + w :], base[:, s + w :])

    # keeping a token out: with τ = −inf everything is written, except what the hook removes
    model = bmojo(window=w, memory_size=2, threshold=-math.inf, n_layers=1)
    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.0.memory.hook_write", lambda t, hook: t.index_fill(1, torch.tensor([s]), 0.0))]):
        _, cache = model.run_with_cache(x)
    parts = model.split_pattern(cache, 0)
    assert float(parts.memory[..., s].abs().max()) == 0
    assert bool((parts.window[:, :, s : s + w, s] > 0).all())  # still in its window


# -- paths, hooks, losses ----------------------------------------------------------
def test_fused_and_explicit_attention_agree_even_with_empty_rows():
    for kw in (dict(window=3, memory_size=2), dict(window=0, memory_size=1, use_ssm=False)):
        model = bmojo(**kw)
        x = tokens()
        with torch.no_grad():
            fused = model(x)
            explicit, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
        assert torch.isfinite(fused).all()
        close(fused, explicit)
        pat = cache["blocks.0.attn.hook_pattern"]
        assert pat.shape == (2, 4, 20, 21)
        parts = split_pattern(pat, model.cfg)
        assert torch.equal(parts.window + parts.memory, pat[..., :20])


def test_innovation_hook_and_loss():
    model = bmojo(window=2, memory_size=2)
    x = tokens()
    out, cache = model.run_with_cache(x)
    block = model.blocks[0]
    u = block.ln1(cache["blocks.0.hook_resid_pre"])
    e = innovation_error(u, cache["blocks.0.memory.hook_fading"], block.memory.W_p)
    z = e / (model.cfg.innovation_eps + e.cumsum(-1) / torch.arange(1, 21))
    close(cache["blocks.0.memory.hook_innovation"], z)
    innovation = cache["blocks.0.memory.hook_innovation"]
    assert torch.equal(cache["blocks.0.memory.hook_write"], (innovation > model.cfg.threshold).float())
    aux = model.auxiliary_losses()
    model.zero_grad()
    aux["innovation"].backward()
    assert block.memory.W_p.grad.abs().sum() > 0
    assert block.mixer.in_proj.weight.grad is None and model.embed.weight.grad is None  # only W_p learns


@pytest.mark.parametrize("backend", ["torch", "reference", "triton"])
def test_runs_with_every_scan_backend(backend):
    if backend == "triton":
        pytest.importorskip("ssmlens.kernels.triton_scan")
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("triton on the CPU needs TRITON_INTERPRET=1")
    # τ = −inf: the memory is exercised, and rounding differences between backends
    # cannot flip a write decision
    model = bmojo(window=3, memory_size=2, threshold=-math.inf, scan_backend="torch")
    x = tokens()
    with torch.no_grad():
        ref = model(x)
        model.cfg.scan_backend = backend
        for block in model.blocks:
            block.mixer.cfg.scan_backend = backend
        close(model(x), ref, rtol=1e-4)


def test_save_load_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "bmojo", "ssmlens.models.bmojo:BMojo")
    model = bmojo(window=3, memory_size=2, threshold=-math.inf)
    model.save(tmp_path / "ckpt")
    loaded = BMojo.load(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("field, value", [("window", -1), ("memory_size", -2), ("n_heads", 3),
                                          ("innovation_eps", 0.0), ("d_mlp", -1), ("threshold", math.nan)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        BMojoConfig(**{**SMALL, field: value})


def test_memory_size_longer_than_the_sequence_is_fine():
    model = bmojo(window=2, memory_size=1000)
    assert model(tokens(L=8)).shape == (2, 8, 50)


def test_untrained_model_writes_nothing_at_the_default_threshold():
    torch.manual_seed(0)
    model = BMojo(BMojoConfig(**SMALL)).eval()  # W_p = 0: e_t ≈ 1 for every token
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(), names_filter=lambda n: n.endswith(("hook_innovation", "hook_write")))
    assert model.cfg.threshold == 1.5
    assert float(cache["blocks.0.memory.hook_innovation"].sub(1).abs().max()) < 0.2
    assert all(float(cache[f"blocks.{l}.memory.hook_write"].max()) == 0 for l in range(2))
