"""ssmlens.load_model: one call for ssmlens and Hugging Face directories, .bin files read
with weights_only, dtype/device, and a named error for every bad directory."""

import json

import pytest
import torch

import ssmlens
from ssmlens.models import CheckpointError, Mamba, Transformer, load_model
from ssmlens.models.hf_random import hf_model, write_random_checkpoint
from ssmlens.models.loader import parse_dtype

from helpers import rel_err

GPT2 = ("GPT2LMHeadModel", dict(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=40, bos_token_id=0,
                                eos_token_id=0))


def test_root_load_model_is_the_loader(tmp_path):
    assert ssmlens.load_model is load_model
    model = Mamba(vocab_size=20, d_model=16, n_layers=1, d_state=4).eval()
    model.save(tmp_path / "own")
    again = ssmlens.load_model(tmp_path / "own", dtype="bf16")
    assert type(again) is Mamba and again.embed.weight.dtype == torch.bfloat16 and not again.training


class Arbitrary:
    """Not a tensor: a checkpoint pickling it could run code when unpickled."""


def test_weights_only_bin_and_shards(tmp_path):
    hf = hf_model(GPT2, perturb=0.1)
    hf.config.save_pretrained(tmp_path)
    state = hf.state_dict()
    keys = sorted(state)
    half = len(keys) // 2
    for i, part in enumerate((keys[:half], keys[half:])):  # a sharded .bin with its index
        torch.save({k: state[k] for k in part}, tmp_path / f"pytorch_model-0000{i + 1}.bin")
    index = {"weight_map": {k: f"pytorch_model-0000{1 + (j >= half)}.bin" for j, k in enumerate(keys)}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    ours = load_model(tmp_path)
    tokens = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        assert rel_err(ours(tokens), hf(tokens).logits) < 1e-4
    # a pickle of arbitrary objects is refused (weights_only=True), and the file named
    torch.save({"w": Arbitrary()}, tmp_path / "pytorch_model-00002.bin")
    with pytest.raises(CheckpointError, match="corrupt weights file .*pytorch_model-00002.bin.*Unpickl"):
        load_model(tmp_path)
    (tmp_path / "pytorch_model-00002.bin").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="corrupt weights file .*pytorch_model-00002.bin"):
        load_model(tmp_path)
    (tmp_path / "pytorch_model-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="missing weights file.*pytorch_model-00002.bin"):
        load_model(tmp_path)


def test_params_are_real_and_trainable(tmp_path):
    write_random_checkpoint(GPT2, tmp_path, tokenizer=False)
    model = load_model(tmp_path)
    params = dict(model.named_parameters())
    assert params and all(not p.is_meta and p.requires_grad and isinstance(p, torch.nn.Parameter)
                          for p in params.values())
    model(torch.randint(0, 40, (1, 5))).sum().backward()
    assert model.blocks[0].attn.W_Q.weight.grad is not None


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    msg = str(e.value)
    assert "unsupported architecture" in msg and "'llama'" in msg and "LlamaForCausalLM" in msg
    for supported in ("mamba", "mamba2", "gpt_neox", "gpt2"):
        assert supported in msg
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(CheckpointError, match="unsupported architecture: no model_type"):
        load_model(tmp_path)


def test_architectures_without_model_type(tmp_path):
    write_random_checkpoint(GPT2, tmp_path, tokenizer=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("model_type")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert isinstance(load_model(tmp_path), Transformer)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nowhere")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(CheckpointError, match="missing .*config.json"):
        load_model(tmp_path / "empty")
    write_random_checkpoint(GPT2, tmp_path / "g", tokenizer=False)
    (tmp_path / "g" / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="corrupt weights file .*model.safetensors"):
        load_model(tmp_path / "g")
    (tmp_path / "g" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in"):
        load_model(tmp_path / "g")
    (tmp_path / "g" / "config.json").write_text('{"model_type": "gpt2",')
    with pytest.raises(CheckpointError, match="corrupt .*config.json"):
        load_model(tmp_path / "g")


def test_weights_that_do_not_fit_are_named(tmp_path):
    write_random_checkpoint(GPT2, tmp_path, tokenizer=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_embd"] = 24
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_model(tmp_path)


def test_dtype_names():
    assert parse_dtype("bfloat16") is parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("torch.float16") is torch.float16 and parse_dtype(None) is None
    with pytest.raises(ValueError, match="floating torch dtype"):
        parse_dtype("int8")
