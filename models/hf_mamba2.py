"""Load a Hugging Face Mamba-2 checkpoint directory (``Mamba2ForCausalLM``).

The layout is transformers': ``backbone.embeddings``, ``backbone.layers.{i}.norm`` /
``.mixer.{in_proj, conv1d, dt_bias, A_log, D, norm, out_proj}``, ``backbone.norm_f``,
optional ``lm_head``; the mixer's names are ours already. Only local paths.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ssmlens.models.checkpoint import CheckpointError
from ssmlens.models.loader import build_loaded, read_json_config, read_state
from ssmlens.models.mamba2 import Mamba2, Mamba2Config


def _hf_config(cfg: dict) -> dict:
    """Map transformers' Mamba2Config fields onto ours."""
    try:
        d_model, expand = cfg["hidden_size"], cfg.get("expand", 2)
        out = dict(
            vocab_size=cfg["vocab_size"],
            d_model=d_model,
            n_layers=cfg["num_hidden_layers"],
            d_state=cfg.get("state_size", 128),
            d_conv=cfg.get("conv_kernel", 4),
            expand=expand,
            d_head=cfg.get("head_dim", 64),
            n_groups=cfg.get("n_groups", 8),
            bias=cfg.get("use_bias", False),
            conv_bias=cfg.get("use_conv_bias", True),
            norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=cfg.get("tie_word_embeddings", False),
        )
    except KeyError as e:
        raise CheckpointError(f"Hugging Face Mamba-2 config.json lacks field {e.args[0]!r}") from None
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"only hidden_act='silu' is supported, got {cfg['hidden_act']!r}")
    heads = cfg.get("num_heads")
    if heads is not None and heads * out["d_head"] != expand * d_model:
        raise CheckpointError(f"num_heads={heads} × head_dim={out['d_head']} != expand × hidden_size = "
                              f"{expand * d_model}")
    low, high = cfg.get("time_step_limit", (0.0, math.inf))
    out["dt_limit_min"], out["dt_limit_max"] = float(low), None if math.isinf(high) else float(high)
    return out


def _rename(key: str) -> str:
    if key == "lm_head.weight":
        return "unembed.weight"
    key = key.removeprefix("backbone.")
    key = key.replace("embeddings.", "embed.", 1).replace("embedding.", "embed.", 1).replace("norm_f.", "ln_final.")
    return key.replace("layers.", "blocks.", 1)


def load_hf_mamba2(path: str | Path, device: str | torch.device | None = "cpu", dtype: torch.dtype | None = None):
    """A ``Mamba2`` holding the checkpoint in ``path`` (on ``device``, in ``dtype``)."""
    path = Path(path)
    cfg = Mamba2Config(**_hf_config(read_json_config(path)))
    state = {_rename(k): v for k, v in read_state(path).items()}
    if cfg.tie_embeddings:
        state.pop("unembed.weight", None)  # the tied head may be stored too
    return build_loaded(Mamba2, cfg, state, str(path), device=device, dtype=dtype)
