"""Load a checkpoint in state-spaces' original format (mamba_ssm's ``MambaLMHeadModel``):
``state-spaces/mamba-130m`` … ``mamba-2.8b``, ``mamba2-130m`` … ``mamba2-2.7b``.

``config.json`` holds ``d_model``, ``n_layer``, ``vocab_size`` (padded up to
``pad_vocab_size_multiple``), ``ssm_cfg`` (``{"layer": "Mamba2", ...}`` for Mamba-2,
Mamba-1 otherwise), ``rms_norm`` and ``tie_embeddings``; the weights
(``pytorch_model.bin``) are ``backbone.embedding``, ``backbone.layers.{i}.norm`` /
``.mixer.*``, ``backbone.norm_f``, ``lm_head``. These repositories ship no tokenizer
(they use EleutherAI/gpt-neox-20b's): pass ``tokenizer=`` to ``ssmlens.load_model``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ssmlens.models.checkpoint import CheckpointError
from ssmlens.models.loader import build_loaded, read_json_config, read_state

# mamba_ssm's Mamba2 argument -> our Mamba2Options field
_MAMBA2_FIELDS = {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand", "headdim": "d_head",
                  "ngroups": "n_groups", "bias": "bias", "conv_bias": "conv_bias"}
_MAMBA1_FIELDS = {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand", "dt_rank": "dt_rank",
                  "bias": "bias", "conv_bias": "conv_bias"}
_IGNORED = {"layer", "dt_min", "dt_max", "dt_init_floor", "dt_init", "dt_scale", "A_init_range", "chunk_size",
            "use_fast_path", "norm_before_gate", "rmsnorm"}


def _config(cfg: dict) -> tuple[str, dict]:
    """(our model name, its config fields) of a mamba_ssm config.json."""
    try:
        d_model, n_layer, vocab = cfg["d_model"], cfg["n_layer"], cfg["vocab_size"]
    except KeyError as e:
        raise CheckpointError(f"mamba_ssm config.json lacks field {e.args[0]!r}") from None
    if cfg.get("d_intermediate", 0) or cfg.get("attn_layer_idx"):
        raise CheckpointError("mamba_ssm checkpoints with MLP (d_intermediate) or attention layers "
                              "(attn_layer_idx) are not supported")
    multiple = cfg.get("pad_vocab_size_multiple", 1) or 1
    ssm = dict(cfg.get("ssm_cfg") or {})
    layer = ssm.get("layer", "Mamba1")
    if layer not in ("Mamba1", "Mamba2"):
        raise CheckpointError(f"ssm_cfg layer {layer!r} is not supported (Mamba1, Mamba2)")
    if layer == "Mamba2" and (ssm.get("D_has_hdim") or ssm.get("d_ssm") or ssm.get("norm_before_gate")
                              or ssm.get("rmsnorm") is False):
        raise CheckpointError(f"Mamba2 with ssm_cfg {ssm} is not supported (D_has_hdim, d_ssm, "
                              "norm_before_gate and rmsnorm=False are not)")
    names = _MAMBA2_FIELDS if layer == "Mamba2" else _MAMBA1_FIELDS
    unknown = sorted(set(ssm) - set(names) - _IGNORED - {"D_has_hdim", "d_ssm", "dt_limit"})
    if unknown:
        raise CheckpointError(f"mamba_ssm ssm_cfg field(s) {unknown} are not supported")
    out = {names[k]: v for k, v in ssm.items() if k in names}
    if layer == "Mamba2" and "dt_limit" in ssm:
        low, high = ssm["dt_limit"]
        out["dt_limit_min"], out["dt_limit_max"] = float(low), None if math.isinf(high) else float(high)
    out.update(vocab_size=math.ceil(vocab / multiple) * multiple, d_model=d_model, n_layers=n_layer,
               norm="rms" if cfg.get("rms_norm", True) else "layer", norm_eps=cfg.get("norm_epsilon", 1e-5),
               tie_embeddings=cfg.get("tie_embeddings", True))
    return ("mamba2" if layer == "Mamba2" else "mamba"), out


def _rename(key: str) -> str:
    if key == "lm_head.weight":
        return "unembed.weight"
    key = key.removeprefix("backbone.").replace("embedding.", "embed.", 1).replace("norm_f.", "ln_final.")
    return key.replace("layers.", "blocks.", 1)


def load_mamba_ssm(path: str | Path, device: str | torch.device | None = "cpu", dtype: torch.dtype | None = None):
    """A ``Mamba`` or ``Mamba2`` holding the mamba_ssm checkpoint in ``path``."""
    from ssmlens.models.registry import model_class

    path = Path(path)
    name, fields = _config(read_json_config(path))
    cls = model_class(name)
    cfg = cls.config_class(**fields)
    state = {_rename(k): v for k, v in read_state(path).items()}
    if cfg.tie_embeddings:
        state.pop("unembed.weight", None)
    return build_loaded(cls, cfg, state, str(path), device=device, dtype=dtype)
