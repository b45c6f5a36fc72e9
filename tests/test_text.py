"""Text in and out (tokenizer.json next to the weights), BOS conventions per family, the
text prompt sets' roles, probes on them, and ``ssmlens cache --prompts``."""

import numpy as np
import pytest
import torch

from ssmlens.interp.cli import main
from ssmlens.interp.store import open_run
from ssmlens.interp.tasks.text_prompts import (CITIES, NAMES, corrupt_facts, corrupt_repeated, fact_recall,
                                               make_prompt_set, repeated_tokens, single_token_words)
from ssmlens.models import Mamba, load_model
from ssmlens.models.hf_random import write_random_checkpoint
from ssmlens.models.text import NoTokenizerError
from ssmlens.probes.patching import patching_sweep

TEXTS = ["Mary lives in Paris.", "Ünïcode ✓ and  double  spaces\nnew line", "<|endoftext|> inside", ""]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    for name in ("tiny-gpt2", "tiny-mamba"):
        write_random_checkpoint(name, root / name, perturb=0.05)
    return root


@pytest.fixture(scope="module")
def gpt2(dirs):
    return load_model(dirs / "tiny-gpt2")


def test_round_trip(gpt2):
    for text in TEXTS[:3]:  # byte-level BPE: any text comes back exactly
        tokens = gpt2.to_tokens(text, prepend_bos=False)
        assert tokens.dtype == torch.int64 and tokens.shape[0] == 1
        assert gpt2.to_string(tokens[0]) == text
        assert len(gpt2.to_str_tokens(text, prepend_bos=False)) == tokens.shape[1]
    assert "".join(gpt2.to_str_tokens(TEXTS[0], prepend_bos=False)) == TEXTS[0]  # ASCII: tokens concatenate
    with pytest.raises(ValueError, match="no tokens"):
        gpt2.to_tokens(TEXTS[3], prepend_bos=False)
    assert gpt2.to_single_token(" Paris") == gpt2.to_tokens(" Paris", prepend_bos=False)[0, 0]
    with pytest.raises(ValueError, match="not one"):
        gpt2.to_single_token(" Parisian avenues")


def test_prepend_bos_per_family(dirs, gpt2):
    mamba = load_model(dirs / "tiny-mamba")
    bos = gpt2.tokenizer.bos_id
    assert gpt2.to_tokens("Mary")[0, 0] == bos  # GPT-2 / Pythia: BOS first, as TransformerLens
    assert mamba.to_tokens("Mary")[0, 0] != bos  # Mamba: the text as it is
    assert mamba.to_tokens("Mary", prepend_bos=True)[0, 0] == bos
    assert gpt2.to_str_tokens("Mary")[0] == "<|endoftext|>"


def test_batch_padding_and_str_tokens(gpt2):
    tokens = gpt2.to_tokens(["Mary lives in Paris.", "Bob"])
    short = gpt2.to_tokens("Bob")[0]
    assert tokens.shape[0] == 2 and torch.equal(tokens[1, : len(short)], short)
    assert (tokens[1, len(short):] == gpt2.tokenizer.pad_id).all()
    rows = gpt2.to_str_tokens(tokens)
    assert len(rows) == 2 and len(rows[0]) == tokens.shape[1]
    assert gpt2.to_string(tokens)[0].endswith("Mary lives in Paris.")


def test_no_tokenizer_is_a_clear_error(tmp_path):
    model = Mamba(vocab_size=20, d_model=16, n_layers=1)
    with pytest.raises(NoTokenizerError, match="no tokenizer.*tokenizer.json.*set_tokenizer"):
        model.to_tokens("hello")
    write_random_checkpoint("tiny-mamba", tmp_path / "m", tokenizer=False)
    bare = load_model(tmp_path / "m")
    assert not bare.has_tokenizer and bare.tokenizer is None and getattr(bare, "tokenizer", 1) is None
    with pytest.raises(NoTokenizerError):
        bare.to_str_tokens("hello")
    with pytest.raises(NoTokenizerError):
        fact_recall(bare, n=2)


def test_tokenizer_from_elsewhere(dirs, tmp_path):
    write_random_checkpoint("tiny-mamba", tmp_path / "m", tokenizer=False)
    model = load_model(tmp_path / "m", tokenizer=dirs / "tiny-gpt2")  # mamba2-130m ships none
    assert model.to_string(model.to_tokens("Rome")[0]) == "Rome"
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="corrupt tokenizer file"):
        model.set_tokenizer(tmp_path / "bad.json")


def test_repeated_tokens_roles(gpt2):
    batch = repeated_tokens(gpt2, n=5, half_len=7, seed=3)
    assert batch.tokens.shape == (5, 15) and (batch.tokens[:, 0] == gpt2.tokenizer.bos_id).all()
    assert torch.equal(batch.tokens_at("query"), batch.tokens_at("key"))  # r_i twice
    assert torch.equal(batch.tokens_at("answer"), batch.tokens_at("value"))  # r_{i+1} twice
    assert (batch.tokens[:, 1:] != gpt2.tokenizer.bos_id).all()  # no special tokens inside
    assert all(len(set(row[1:8].tolist())) == 7 for row in batch.tokens)  # distinct within an example
    corr = corrupt_repeated(batch, seed=1)
    assert torch.equal(corr.tokens[:, 8:], batch.tokens[:, 8:])
    assert not (corr.tokens[:, 1:8] == batch.tokens[:, 1:8]).any()


def test_fact_recall_roles_found_from_tokenization(gpt2):
    assert single_token_words(gpt2, NAMES) == NAMES and single_token_words(gpt2, CITIES) == CITIES
    batch = fact_recall(gpt2, n=6, n_facts=3, seed=2)
    assert torch.equal(batch.tokens_at("answer"), batch.tokens_at("queried_value"))
    assert torch.equal(batch.tokens_at("query_key"), batch.tokens_at("queried_key"))
    names = [gpt2.to_single_token(" " + w) for w in NAMES]
    assert torch.isin(batch.tokens_at("key"), torch.tensor(names)).all()
    text = gpt2.to_string(batch.tokens[0])
    city = gpt2.to_string(batch.tokens_at("answer")[0])
    assert text.endswith(" lives in" + city)
    corr = corrupt_facts(batch, "value", seed=0)
    changed = (corr.tokens != batch.tokens)
    assert changed.sum(1).eq(1).all() and changed.gather(1, batch.role("queried_value")).all()
    assert not torch.isin(corr.tokens_at("queried_value")[0], batch.tokens[0])


def test_patching_by_role_runs_on_text(gpt2):
    clean = fact_recall(gpt2, n=4, n_facts=2, seed=0)
    corr = corrupt_facts(clean, "value", seed=1)
    result = patching_sweep(gpt2, clean, corr, "resid_pre", ["queried_value", "query_key", "query"],
                            progress=False)
    restored = result.sel(metric="restored", hook="hook_resid_pre").values  # layer x role
    assert np.allclose(restored[0], [1, 0, 0], atol=1e-6)  # layer 0: the corrupted token's own position
    assert np.isfinite(restored).all()


def test_make_prompt_set_lengths(gpt2):
    assert make_prompt_set("repeated_tokens", gpt2, 2, 33, seed=0).seq_len == 33
    assert make_prompt_set("fact_recall", gpt2, 2, 40, seed=0).seq_len <= 40
    with pytest.raises(ValueError, match="valid prompt sets: repeated_tokens, fact_recall"):
        make_prompt_set("ioi", gpt2, 2, 40)


def test_cli_cache_prompts_token_budget_positions(dirs, tmp_path, capsys):
    code = main(["cache", str(dirs / "tiny-mamba"), "--prompts", "repeated_tokens", "--seq-len", "20", "--n", "7",
                 "--token-budget", "60", "--hooks", "delta,ssm_state", "--positions", "last", "--out",
                 str(tmp_path / "run"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "tokens/s" in out
    run = open_run(tmp_path / "run")
    assert run.config["rows_per_forward"] == 3 and run.config["positions"] == "last"
    delta = run.cache["blocks.1.mixer.hook_delta"].load()
    assert tuple(delta.shape) == (7, 1, 64) and run.metrics["tokens"] == 140
    model = load_model(dirs / "tiny-mamba")
    batch = make_prompt_set("repeated_tokens", model, 7, 20, seed=0)
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens, names_filter="blocks.1.mixer.hook_delta")
    want = cache["blocks.1.mixer.hook_delta"].gather(1, batch.role("last")[..., None].expand(-1, -1, 64))
    assert torch.allclose(delta, want, atol=1e-6)
    code = main(["cache", str(dirs / "tiny-mamba"), "--prompts", "repeated_tokens", "--n", "2", "--positions",
                 "nowhere", "--out", str(tmp_path / "bad"), "--no-progress"])
    assert code == 2 and "no such role" in capsys.readouterr().err
