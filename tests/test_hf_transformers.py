"""GPT-NeoX (Pythia) and GPT-2 checkpoints load into our Transformer and equal
transformers' GPTNeoXForCausalLM / GPT2LMHeadModel: logits and every layer's hidden
state, tied and untied embeddings, partial rotary, parallel and sequential blocks."""

import json

import numpy as np
import pytest
import torch

from ssmlens.models import Transformer, TransformerConfig, load_model
from ssmlens.models.hf_random import write_random_checkpoint
from ssmlens.probes.patching import patching_sweep, patching_sweep_reference

from helpers import rel_err
from patching_helpers import max_diff

NEOX = ("GPTNeoXForCausalLM", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                   vocab_size=67, max_position_embeddings=64))
GPT2 = ("GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=67, bos_token_id=0,
                                eos_token_id=0))


def _check_equal(hf, ours, n_layers=2, vocab=67):
    tokens = torch.randint(0, vocab, (3, 23))
    with torch.no_grad():
        ref = hf(tokens, output_hidden_states=True)
        logits, cache = ours.run_with_cache(tokens)
        patterned = ours.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: p)])
    assert rel_err(logits, ref.logits) < 1e-4
    assert rel_err(patterned, ref.logits) < 1e-4  # the explicit-pattern path
    for layer in range(n_layers):  # transformers' hidden_states[l] is block l's input
        assert rel_err(cache[f"blocks.{layer}.hook_resid_pre"], ref.hidden_states[layer]) < 1e-4
    assert rel_err(ours.ln_final(cache[f"blocks.{n_layers - 1}.hook_resid_post"]), ref.hidden_states[-1]) < 1e-4
    return cache


@pytest.mark.parametrize("parallel, tie, pct", [(True, False, 0.25), (False, True, 1.0), (True, True, 0.5)])
def test_gpt_neox_matches_transformers(tmp_path, parallel, tie, pct):
    fields = {**NEOX[1], "use_parallel_residual": parallel, "tie_word_embeddings": tie, "rotary_pct": pct}
    hf = write_random_checkpoint((NEOX[0], fields), tmp_path, perturb=0.1, tokenizer=False)
    ours = load_model(tmp_path)
    assert isinstance(ours, Transformer)
    assert ours.cfg.parallel_attn_mlp == parallel and ours.cfg.rotary_dim == int(8 * pct)
    assert (ours.unembed is None) == tie
    cache = _check_equal(hf, ours)
    assert ("blocks.0.hook_resid_mid" in cache) == (not parallel)  # as TransformerLens: none in parallel blocks


def test_gpt_neox_older_config_fields(tmp_path):
    """Pythia's published config.json: rotary_pct / rotary_emb_base, no rope_parameters."""
    hf = write_random_checkpoint((NEOX[0], {**NEOX[1], "rotary_pct": 0.25}), tmp_path, perturb=0.1, tokenizer=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg.update(rotary_pct=rope["partial_rotary_factor"], rotary_emb_base=rope["rope_theta"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _check_equal(hf, load_model(tmp_path))


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_matches_transformers(tmp_path, tie):
    hf = write_random_checkpoint((GPT2[0], {**GPT2[1], "tie_word_embeddings": tie}), tmp_path, perturb=0.1,
                                 tokenizer=False)
    ours = load_model(tmp_path)
    assert ours.cfg.positional == "learned" and ours.cfg.act_fn == "gelu_new" and (ours.unembed is None) == tie
    cache = _check_equal(hf, ours)
    assert "hook_pos_embed" in cache and "blocks.1.hook_resid_mid" in cache


def test_gpt2_unsupported_variant_named(tmp_path):
    write_random_checkpoint((GPT2[0], {**GPT2[1], "scale_attn_by_inverse_layer_idx": True}), tmp_path,
                            tokenizer=False)
    with pytest.raises(Exception, match="scale_attn_by_inverse_layer_idx"):
        load_model(tmp_path)


def test_parallel_rotary_patching_equals_reference():
    """The resumed patching engine (forward_read of a parallel block, partial rotary)
    equals one full forward per patch."""
    from ssmlens.interp.tasks import corrupt, make_task

    task = make_task("ar", n_keys=8, n_values=8, n_pairs=2)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=task.vocab_size, d_model=16, n_layers=2, n_heads=2,
                                          positional="rotary", rotary_dim=4, parallel_attn_mlp=True)).eval()
    clean = task.sample(6, 0)
    corrupted = corrupt(clean, "value", 1)
    fast = patching_sweep(model, clean, corrupted, "resid_pre,attn.hook_out", "all", progress=False)
    ref = patching_sweep_reference(model, clean, corrupted, "resid_pre,attn.hook_out", "all")
    assert np.nanmax(np.abs(fast.sel(metric="restored").values)) > 0.05  # something to compare
    assert max_diff(fast, ref) < 1e-5


def test_defaults_keep_old_checkpoints(tmp_path):
    """A checkpoint written without the new fields loads into the same model."""
    torch.manual_seed(0)
    model = Transformer(vocab_size=20, d_model=16, n_layers=2, n_heads=2, positional="rotary").eval()
    d = model.save(tmp_path / "old")
    meta = json.loads((d / "config.json").read_text())
    for field in ("rotary_dim", "rotary_base", "parallel_attn_mlp", "act_fn"):
        meta["config"].pop(field)
    (d / "config.json").write_text(json.dumps(meta))
    tokens = torch.randint(0, 20, (2, 9))
    with torch.no_grad():
        assert torch.equal(load_model(d)(tokens), model(tokens))
    with pytest.raises(ValueError, match="rotary_dim"):
        TransformerConfig(d_model=16, n_heads=2, rotary_dim=3)
    with pytest.raises(ValueError, match="act_fn"):
        TransformerConfig(act_fn="relu")
