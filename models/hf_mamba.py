"""Load a Hugging Face Mamba checkpoint directory (config.json + safetensors or .bin).

The layout is that of ``state-spaces/mamba-130m-hf``: ``backbone.embeddings``,
``backbone.layers.{i}.norm`` / ``.mixer.*``, ``backbone.norm_f``, optional
``lm_head``. Only local paths: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssmlens.models.checkpoint import CheckpointError
from ssmlens.models.loader import build_loaded, read_json_config, read_state
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


def load_hf_mamba(path: str | Path, device: str | torch.device | None = "cpu", dtype: torch.dtype | None = None):
    """A ``Mamba`` holding the checkpoint in ``path`` (on ``device``, in ``dtype``)."""
    path = Path(path)
    cfg = MambaConfig(**_hf_config(read_json_config(path)))
    state = {_rename(k): v for k, v in read_state(path).items()}
    if cfg.tie_embeddings:
        state.pop("unembed.weight", None)  # HF may store the tied head too
    return build_loaded(Mamba, cfg, state, str(path), device=device, dtype=dtype)
