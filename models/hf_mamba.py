"""Load a Hugging Face Mamba checkpoint directory (config.json + safetensors).

The layout is that of ``state-spaces/mamba-130m-hf``: ``backbone.embeddings``,
``backbone.layers.{i}.norm`` / ``.mixer.*``, ``backbone.norm_f``, optional
``lm_head``. Only local paths: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ssmlens.models.checkpoint import CheckpointError, load_state_checked, read_hf_config
from ssmlens.models.mamba import Mamba, MambaConfig


def _hf_config(cfg: dict) -> dict:
    """Map Hugging Face MambaConfig fields onto ours."""
    try:
        out = dict(
            vocab_size=cfg["vocab_size"],
            d_model=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            d_state=cfg.get("state_size", 16),
            d_conv=cfg.get("conv_kernel", 4),
            expand=cfg.get("expand", 2),
            dt_rank=cfg.get("time_step_rank", "auto"),
            bias=cfg.get("use_bias", False),
            conv_bias=cfg.get("use_conv_bias", True),
            norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=cfg.get("tie_word_embeddings", True),
        )
    except KeyError as e:
        raise CheckpointError(f"Hugging Face config.json lacks field {e.args[0]!r}") from None
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"only hidden_act='silu' is supported, got {cfg['hidden_act']!r}")
    return out


def _rename(key: str) -> str | None:
    if key == "lm_head.weight":
        return "unembed.weight"
    key = key.removeprefix("backbone.")
    key = key.replace("embeddings.", "embed.").replace("norm_f.", "ln_final.")
    return key.replace("layers.", "blocks.", 1)


def load_hf_mamba(path: str | Path, device: str | torch.device = "cpu"):
    path = Path(path)
    hf_cfg = read_hf_config(path)
    tensors_files = sorted(path.glob("*.safetensors"))
    if not tensors_files:
        raise CheckpointError(f"no *.safetensors file in {path}")
    cfg = MambaConfig(**_hf_config(hf_cfg))
    state = {}
    for f in tensors_files:
        state.update({_rename(k): v for k, v in load_file(str(f)).items()})
    if cfg.tie_embeddings:
        state.pop("unembed.weight", None)  # HF may store the tied head too
    model = Mamba(cfg)
    load_state_checked(model, state, source=str(path))
    return model.to(device)
