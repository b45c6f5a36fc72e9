"""TransformerLens' ActivationCache methods on every registered model (issue 12, item 10):
decompose_resid, accumulated_resid(apply_ln=True), apply_ln_to_stack, logit_attrs,
stack_head_results and TransformerLens' shorthand lookups; the numbers add up."""

from __future__ import annotations

import pytest
import torch

from ssmlens.interp.activation_cache import CacheKeyError
from ssmlens.models import model_names

from every_model import build_small, tokens


def close(a, b, rtol=1e-5):
    a, b = a.detach(), b.detach()
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max().clamp(min=1.0)))


def _with_biases(model):
    """LayerNorm biases and weights away from their init, so that their handling shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture(scope="module", params=model_names())
def run(request):
    model = _with_biases(build_small(request.param))
    x = tokens()
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    return model, x, logits, cache


def _final_bias(model):
    bias = getattr(model.ln_final, "bias", None)
    return torch.zeros(model.cfg.d_model) if bias is None else bias.detach()


def test_decompose_resid_adds_up_to_the_residual_stream(run):
    model, x, logits, cache = run
    n = len(model.blocks)
    parts, labels = cache.decompose_resid(return_labels=True)
    assert len(labels) == parts.shape[0] and labels[0] == "embed"
    close(parts.sum(0), cache[f"blocks.{n - 1}.hook_resid_post"])
    close(cache.decompose_resid(layer=1).sum(0), cache["blocks.1.hook_resid_pre"])
    mixers = cache.decompose_resid(mode="attn", incl_embeds=False)
    embeds = cache.decompose_resid(layer=0)  # the embeddings alone
    if any(kind == "mlp" for kind, _ in cache.resid_writers(0)):  # MLP / MoE layers: the modes split the writes
        rest = cache.decompose_resid(mode="mlp", incl_embeds=False)
        close(embeds.sum(0) + mixers.sum(0) + rest.sum(0), cache[f"blocks.{n - 1}.hook_resid_post"])
    else:
        close(embeds.sum(0) + mixers.sum(0), cache[f"blocks.{n - 1}.hook_resid_post"])
    if "blocks.1.hook_resid_mid" in cache.cache_dict:
        close(cache.decompose_resid(layer=1, mlp_input=True).sum(0), cache["blocks.1.hook_resid_mid"])


def test_apply_ln_to_stack_gives_the_norm_output(run):
    model, x, logits, cache = run
    n = len(model.blocks)
    with torch.no_grad():
        final = model.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"])
        normed = cache.decompose_resid(apply_ln=True).sum(0)
        close(normed + _final_bias(model), final)
        # the first norm of block 1, from the stream entering it
        first = getattr(model.blocks[1], cache.block_norms(1)[0])
        bias = getattr(first, "bias", None)
        want = first(cache["blocks.1.hook_resid_pre"]) - (0 if bias is None else bias)
        close(cache.decompose_resid(layer=1, apply_ln=True).sum(0), want)


def test_logit_attrs_of_the_decomposition_add_up_to_the_logits(run):
    model, x, logits, cache = run
    n = len(model.blocks)
    target = torch.roll(x, -1, dims=1)  # a token per example and position
    picked = logits.gather(-1, target[..., None])[..., 0]
    bias_logit = (_final_bias(model) @ model.W_U)[target]
    attrs = cache.logit_attrs(cache.decompose_resid(), target)
    assert attrs.shape == (cache.decompose_resid().shape[0], *x.shape)
    close(attrs.sum(0) + bias_logit, picked, rtol=1e-4)
    # the last entry of the accumulated stream is the final residual: its attribution is the logit
    accumulated = cache.accumulated_resid()
    close(cache.logit_attrs(accumulated, target)[-1] + bias_logit, picked, rtol=1e-4)
    # logit differences
    other = (target + 1) % model.cfg.vocab_size
    diff = cache.logit_attrs(cache.decompose_resid(), target, incorrect_tokens=other).sum(0)
    close(diff + bias_logit - (_final_bias(model) @ model.W_U)[other],
          picked - logits.gather(-1, other[..., None])[..., 0], rtol=1e-4)
    assert torch.equal(model.b_U, torch.zeros(model.cfg.vocab_size))
    assert n >= 1


def test_accumulated_resid_with_the_final_norm_is_the_logit_lens(run):
    model, x, logits, cache = run
    n = len(model.blocks)
    stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    assert labels == [f"{l}_pre" for l in range(n)] + ["final_post"]
    close(stack[-1] @ model.W_U, logits, rtol=1e-4)
    with torch.no_grad():
        close(stack[0], model.ln_final(cache["blocks.0.hook_resid_pre"]))  # each entry normed on its own


def test_stack_head_results_where_there_are_heads(run):
    model, x, logits, cache = run
    n = len(model.blocks)
    attn = getattr(model.blocks[0], "attn", None)
    if attn is None:
        with pytest.raises(NotImplementedError, match="no attention heads"):
            cache.stack_head_results()
        return
    heads, labels = cache.stack_head_results(return_labels=True)
    assert labels[:2] == ["L0H0", "L0H1"] and heads.shape[0] == n * attn.n_heads
    per_layer = heads.view(n, attn.n_heads, *heads.shape[1:]).sum(1)
    for l in range(n):
        b_O = model.blocks[l].attn.W_O.bias
        close(per_layer[l] + (0 if b_O is None else b_O), cache[f"blocks.{l}.attn.hook_out"])
    with_rest = cache.stack_head_results(incl_remainder=True)
    close(with_rest.sum(0), cache[f"blocks.{n - 1}.hook_resid_post"])
    cache.compute_head_results()
    close(cache["result", 0], heads[: attn.n_heads].movedim(0, -2))


def test_shorthand_lookups_find_our_names(run):
    model, x, logits, cache = run
    norms = cache.block_norms(0)
    assert torch.equal(cache["blocks.0.ln1.hook_scale"], cache[f"blocks.0.{norms[0]}.hook_scale"])
    assert torch.equal(cache["scale", 0, "ln1"], cache[f"blocks.0.{norms[0]}.hook_scale"])
    assert torch.equal(cache["scale"], cache["ln_final.hook_scale"])
    assert torch.equal(cache["resid_pre", -1], cache[f"blocks.{len(model.blocks) - 1}.hook_resid_pre"])
    if "blocks.0.mixer.hook_ssm_state" in cache.cache_dict:
        assert torch.equal(cache["ssm_state", 0], cache["blocks.0.mixer.hook_ssm_state"])
    if "blocks.1.mixer.hook_delta" in cache.cache_dict:  # (H3 has states but no Δ)
        assert torch.equal(cache["delta", 1], cache["blocks.1.mixer.hook_delta"])
    if "blocks.0.memory.hook_write" in cache.cache_dict:
        assert torch.equal(cache["write", 0], cache["blocks.0.memory.hook_write"])
    if "blocks.0.moe.hook_expert" in cache.cache_dict:
        assert torch.equal(cache["expert", 1], cache["blocks.1.moe.hook_expert"])
    with pytest.raises(CacheKeyError, match="not in this cache"):
        cache["ssm_stat", 0]
    if len(norms) < 2:
        with pytest.raises(KeyError):
            cache["blocks.0.ln2.hook_scale"]


def test_no_method_fails_with_an_unrelated_attribute_error(run):
    """Every TransformerLens helper either works or says what is missing."""
    model, x, logits, cache = run
    calls = {
        "decompose_resid": lambda: cache.decompose_resid(apply_ln=True, mlp_input=True, layer=0),
        "accumulated_resid": lambda: cache.accumulated_resid(incl_mid=True, apply_ln=True),
        "stack_head_results": lambda: cache.stack_head_results(apply_ln=True),
        "get_full_resid_decomposition": lambda: cache.get_full_resid_decomposition(),
        "stack_neuron_results": lambda: cache.stack_neuron_results(1),
        "logit_lens": lambda: cache.logit_lens(),
        "compute_ssm_state": lambda: cache.compute_ssm_state(),
        "stack_activation": lambda: cache.stack_activation("resid_post"),
        "logit_attrs(str)": lambda: cache.logit_attrs(cache.accumulated_resid(), "hello"),
    }
    for what, call in calls.items():
        try:
            call()
        except AttributeError as e:  # pragma: no cover - the failure this test is about
            pytest.fail(f"{what}: {e!r}")
        except (NotImplementedError, KeyError, ValueError) as e:
            assert str(e), what
