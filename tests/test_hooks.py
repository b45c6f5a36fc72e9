"""Hook substrate: every DESIGN §2 hook fires with its documented shape, names are
checked, hooks never stay attached, nnsight reads/writes agree with run_with_hooks."""

import pytest
import torch
from nnsight import NNsight

from ssmlens.interp.hook_names import UnknownHookError, dims_for
from ssmlens.interp.hooks import HookPoint, HookShapeError
from ssmlens.models import BMojo, Mamba, MoEMamba, Transformer

B, P, V = 2, 11, 40


def _models():
    torch.manual_seed(0)
    return {
        "mamba": Mamba(vocab_size=V, d_model=32, n_layers=2, d_state=8),
        "transformer": Transformer(vocab_size=V, d_model=32, n_layers=2, n_heads=4),
        "transformer_rotary": Transformer(vocab_size=V, d_model=32, n_layers=2, n_heads=4, positional="rotary"),
        "bmojo": BMojo(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_state=8, window=4, memory_size=3),
        "moe_mamba": MoEMamba(vocab_size=V, d_model=32, n_layers=2, d_state=8, n_experts=3),
    }


MODELS = _models()
SIZES = {"batch": B, "pos": P, "key_pos": P, "query_pos": P, "d_model": 32, "d_inner": 64,
         "d_state": 8, "head": 4, "d_head": 8, "d_mlp": 128, "one": 1}

EXPECTED = {
    "mamba": ["hook_embed"] + [f"blocks.{l}.{s}" for l in range(2) for s in (
        "hook_resid_pre", "hook_resid_post", "mixer.hook_x", "mixer.hook_z", "mixer.hook_conv",
        "mixer.hook_delta", "mixer.hook_B", "mixer.hook_C", "mixer.hook_ssm_state",
        "mixer.hook_ssm_out", "mixer.hook_out")],
    "transformer": ["hook_embed"] + [f"blocks.{l}.{s}" for l in range(2) for s in (
        "hook_resid_pre", "hook_resid_post", "attn.hook_q", "attn.hook_k", "attn.hook_v",
        "attn.hook_z", "attn.hook_pattern", "attn.hook_out", "mlp.hook_out")],
}
EXPECTED["transformer_rotary"] = EXPECTED["transformer"]
EXPECTED["bmojo"] = [n for n in EXPECTED["mamba"] + EXPECTED["transformer"] if n != "hook_embed"] + [
    f"blocks.{l}.memory.hook_{s}" for l in range(2) for s in ("innovation", "write", "fading")] + ["hook_embed"]
EXPECTED["moe_mamba"] = EXPECTED["mamba"] + [
    f"blocks.{l}.moe.hook_{s}" for l in range(2) for s in ("router_logits", "expert", "expert_out", "drop")]
# norm hooks (TransformerLens' hook_scale / hook_normalized), named after each model's norms
NORMS = {"mamba": ("norm",), "transformer": ("ln1", "ln2"), "bmojo": ("ln1", "ln2"), "moe_mamba": ("norm", "moe_norm"),
         "transformer_rotary": ("ln1", "ln2")}
for _kind, _norms in NORMS.items():
    EXPECTED[_kind] = EXPECTED[_kind] + ["ln_final.hook_scale", "ln_final.hook_normalized"] + [
        f"blocks.{l}.{n}.hook_{h}" for l in range(2) for n in _norms for h in ("scale", "normalized")]
# B'MOJO's key axis holds every token plus the query's own fading token (models/bmojo_attention.py)
KEY_EXTRA = {"bmojo": 1}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_hook_fires_with_documented_shape(name):
    model = MODELS[name]
    tokens = torch.randint(0, V, (B, P))
    seen = {}
    hooks = [(h, lambda x, hook: seen.__setitem__(hook.name, tuple(x.shape))) for h in model.hook_dict]
    model.run_with_hooks(tokens, fwd_hooks=hooks)
    assert set(seen) == set(model.hook_dict), "some hook point did not fire"
    sizes = dict(SIZES, key_pos=P + KEY_EXTRA.get(name, 0), expert=3)
    for hook_name in EXPECTED[name]:
        assert hook_name in seen, hook_name
        want = tuple(sizes[d] for d in dims_for(hook_name))
        if hook_name.endswith(("attn.hook_k", "attn.hook_v")):
            want = (B, P, 4, 8)  # keys as projected: one per token
        assert seen[hook_name] == want, (hook_name, seen[hook_name], want)


@pytest.mark.parametrize("name", list(MODELS))
def test_cache_matches_plain_forward(name):
    model = MODELS[name]
    tokens = torch.randint(0, V, (B, P))
    plain = model(tokens)
    out, cache = model.run_with_cache(tokens)
    assert torch.allclose(out, plain, rtol=1e-5, atol=1e-5)
    assert set(cache.keys()) == set(model.hook_dict)
    _, some = model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_post"])
    assert list(some.keys()) == ["blocks.1.hook_resid_post"]
    # explicit (cached pattern) and fused attention agree to rounding only
    assert torch.allclose(some["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_post"], rtol=1e-5, atol=1e-6)


def test_costly_values_only_when_listened(monkeypatch):
    model = MODELS["transformer"]
    calls = []
    orig = type(model.blocks[0].attn).explicit_attention

    def spy(self, *a):
        calls.append(1)
        return orig(self, *a)

    monkeypatch.setattr(type(model.blocks[0].attn), "explicit_attention", spy)
    tokens = torch.randint(0, V, (B, P))
    model(tokens)
    assert calls == []
    model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_pattern"])
    assert calls == [1]
    m = MODELS["mamba"]
    assert not m.blocks[0].mixer.hook_ssm_state.listened
    with m.hooks([("blocks.0.mixer.hook_ssm_state", lambda x, hook: None)]):
        assert m.blocks[0].mixer.hook_ssm_state.listened
    assert not m.blocks[0].mixer.hook_ssm_state.listened


@pytest.mark.parametrize("call", ["run_with_hooks", "run_with_cache", "hooks", "add_hook"])
def test_unknown_name_lists_close_matches(call):
    model = MODELS["mamba"]
    tokens = torch.randint(0, V, (B, P))
    bad = "blocks.0.mixer.hook_dleta"
    with pytest.raises(UnknownHookError, match=r"blocks\.0\.mixer\.hook_delta"):
        if call == "run_with_hooks":
            model.run_with_hooks(tokens, fwd_hooks=[(bad, lambda x, hook: x)])
        elif call == "run_with_cache":
            model.run_with_cache(tokens, names_filter=[bad])
        elif call == "hooks":
            with model.hooks([(bad, lambda x, hook: x)]):
                pass
        else:
            model.add_hook(bad, lambda x, hook: x)
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())


def test_hooks_removed_after_exception():
    model = MODELS["mamba"]
    tokens = torch.randint(0, V, (B, P))

    def boom(x, hook):
        raise RuntimeError("inside hook")

    with pytest.raises(RuntimeError, match="inside hook"):
        with model.hooks([("blocks.1.mixer.hook_B", boom), ("blocks.0.hook_resid_pre", lambda x, hook: x)]):
            model(tokens)
    with pytest.raises(RuntimeError, match="inside hook"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mixer.hook_B", boom)])
    model.add_hook("blocks.1.mixer.hook_C", boom)
    with pytest.raises(RuntimeError, match="inside hook"):
        model.run_with_cache(tokens)
    # the caching hooks are gone; only the user's own add_hook stays, as in TransformerLens
    assert sum(len(hp._forward_hooks) for hp in model.hook_dict.values()) == 1
    model.reset_hooks()
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())
    assert not model.blocks[1].mixer.hook_ssm_state.listened


def test_wrong_shape_from_hook_names_the_hook():
    model = MODELS["mamba"]
    tokens = torch.randint(0, V, (B, P))
    with pytest.raises(HookShapeError, match="blocks.1.mixer.hook_C"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mixer.hook_C", lambda x, hook: x[:, :-1])])
    with pytest.raises(HookShapeError, match="hook_z"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mixer.hook_z", lambda x, hook: 3.0)])
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize("name, hook", [
    ("mamba", "blocks.0.mixer.hook_delta"),
    ("mamba", "blocks.1.mixer.hook_B"),
    ("transformer", "blocks.0.attn.hook_pattern"),
    ("transformer", "blocks.1.mlp.hook_out"),
])
def test_nnsight_read_and_write_match_run_with_hooks(name, hook):
    model = MODELS[name].eval()
    tokens = torch.randint(0, V, (B, P))
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    scale = torch.rand(cache[hook].shape[-1]) + 0.5
    want = model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda x, hook: x * scale)])

    wrapped = NNsight(model)
    point = wrapped
    for part in hook.split("."):
        point = point[int(part)] if part.isdigit() else getattr(point, part)
    with wrapped.trace(tokens):
        read = point.output.save()
    with wrapped.trace(tokens):
        point.output = point.output * scale
        got = wrapped.output.save()
    assert torch.allclose(read, cache[hook], rtol=1e-5, atol=1e-6)  # nnsight traces compute patterns explicitly
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got, model(tokens), atol=1e-4)


def test_bad_tokens_are_named():
    model = MODELS["mamba"]
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 40\)"):
        model(torch.tensor([[1, 2, 40]]))
    with pytest.raises(TypeError, match="integer ids"):
        model(torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        model(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="n_ctx"):
        Transformer(vocab_size=V, d_model=16, n_layers=1, n_heads=2, n_ctx=4)(torch.zeros(1, 5, dtype=torch.long))


def test_global_torch_hooks_still_see_hook_points():
    """An unhooked HookPoint skips nn.Module's dispatch, but not when torch has global
    module hooks: those must keep seeing (and editing) every hook point."""
    model = MODELS["mamba"]
    tokens = torch.randint(0, V, (1, 6))
    seen = []

    def record(module, args, output):
        if isinstance(module, HookPoint):  # only hook points: the model's own modules pass
            seen.append(module.name)
            return output * 0 if module.name == "blocks.0.hook_resid_post" else output

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        edited = model(tokens)
    finally:
        handle.remove()
    assert "blocks.0.mixer.hook_delta" in seen and "blocks.1.hook_resid_post" in seen
    expected = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 0)])
    torch.testing.assert_close(edited, expected)
    assert not torch.allclose(model(tokens), expected)
