"""models.Mamba equals Hugging Face's MambaForCausalLM loaded through from_hf."""

import json

import pytest
import torch
from transformers import MambaConfig as HFConfig
from transformers import MambaForCausalLM

from ssmlens.models import CheckpointError, Mamba

from helpers import rel_err


def _hf_dir(tmp_path, tie=True, use_bias=False, seed=0):
    torch.manual_seed(seed)
    cfg = HFConfig(vocab_size=97, hidden_size=48, state_size=8, num_hidden_layers=2,
                   expand=2, conv_kernel=4, use_bias=use_bias, tie_word_embeddings=tie)
    hf = MambaForCausalLM(cfg).eval()
    with torch.no_grad():  # random weights everywhere, not only the init values
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize("tie", [True, False])
def test_matches_transformers(tmp_path, tie):
    hf = _hf_dir(tmp_path, tie=tie, use_bias=not tie)
    ours = Mamba.from_hf(tmp_path).eval()
    tokens = torch.randint(0, 97, (3, 21))
    with torch.no_grad():
        ref = hf(tokens).logits
        got = ours(tokens)
        got_cached, cache = ours.run_with_cache(tokens)  # states materialized on this path
    assert rel_err(got, ref) < 1e-5
    assert rel_err(got_cached, ref) < 1e-5
    assert cache["blocks.1.mixer.hook_ssm_state"].shape == (3, 21, 96, 8)


def test_from_hf_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Mamba.from_hf(tmp_path / "nope")
    _hf_dir(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["hidden_size"] = 64  # weights no longer fit
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        Mamba.from_hf(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        Mamba.from_hf(tmp_path)
