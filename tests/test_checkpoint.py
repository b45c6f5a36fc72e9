"""save/load round-trips exactly; broken checkpoints get named errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssmlens.models import CheckpointError, Mamba, Transformer, build_model, load_model


@pytest.mark.parametrize("cls, kw", [
    (Mamba, dict(vocab_size=20, d_model=16, n_layers=2, d_state=4)),
    (Mamba, dict(vocab_size=20, d_model=16, n_layers=1, tie_embeddings=False)),
    (Transformer, dict(vocab_size=20, d_model=16, n_layers=2, n_heads=2, positional="rotary")),
])
def test_round_trip_identical_logits(tmp_path, cls, kw):
    model = cls(**kw).eval()
    tokens = torch.randint(0, 20, (2, 9))
    model.save(tmp_path / "ckpt")
    again = cls.load(tmp_path / "ckpt").eval()
    assert torch.equal(model(tokens), again(tokens))
    assert type(load_model(tmp_path / "ckpt")) is cls


def test_errors_name_the_problem(tmp_path):
    model = Mamba(vocab_size=20, d_model=16, n_layers=2, d_state=4)
    d = model.save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing")
    with pytest.raises(TypeError, match="not a Transformer"):
        Transformer.load(d)

    state = load_file(str(d / "model.safetensors"))
    state.pop("blocks.1.mixer.D")
    state["blocks.0.mixer.A_log"] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    msg = str(e.value)
    assert "missing tensors: blocks.1.mixer.D" in msg
    assert "unexpected tensors: extra.weight" in msg
    assert "blocks.0.mixer.A_log: checkpoint (3, 3) vs model (32, 4)" in msg

    (d / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="corrupt weights"):
        load_model(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing checkpoint file .*model.safetensors"):
        load_model(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(d)
    (d / "config.json").write_text(json.dumps({"format": "ssmlens-checkpoint-1", "model_type": "lstm", "config": {}}))
    with pytest.raises(ValueError, match="valid models: .*mamba"):
        load_model(d)


def test_build_model_names_bad_fields():
    with pytest.raises(ValueError, match="unknown config field.*d_modle"):
        build_model("mamba", d_modle=3)
    with pytest.raises(ValueError, match="valid models"):
        build_model("mambo")
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=16"):
        build_model("transformer", d_model=16, n_heads=3)
    with pytest.raises(ValueError, match="d_state must be >= 1"):
        build_model("mamba", d_state=0)


def test_weights_digest_depends_on_the_tensors_not_the_file_layout(tmp_path):
    """Same tensors written in another order give the same digest; one changed value
    gives another."""
    from safetensors.torch import save_file

    from ssmlens.models.checkpoint import WEIGHTS_FILE, weights_digest

    a, b = torch.randn(3, 4), torch.arange(5, dtype=torch.bfloat16)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    (tmp_path / "z").mkdir()
    save_file({"a": a, "b": b}, str(tmp_path / "x" / WEIGHTS_FILE))
    save_file({"b": b, "a": a}, str(tmp_path / "y" / WEIGHTS_FILE), metadata={"note": "other header"})
    changed = a.clone()
    changed[1, 2] += 1
    save_file({"a": changed, "b": b}, str(tmp_path / "z" / WEIGHTS_FILE))
    assert weights_digest(tmp_path / "x") == weights_digest(tmp_path / "y")
    assert weights_digest(tmp_path / "x") != weights_digest(tmp_path / "z")
