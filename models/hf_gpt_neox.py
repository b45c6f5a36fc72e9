"""Load a Hugging Face GPT-NeoX checkpoint directory (Pythia: ``GPTNeoXForCausalLM``)
into our ``Transformer``.

Pythia: rotary embedding on a fraction of each head (``rotary_pct`` / ``rope_parameters``
``partial_rotary_factor``), parallel attention and MLP, LayerNorm with bias, exact GELU,
untied unembedding (``embed_out``). The fused ``query_key_value`` weight is laid out per
head as ``[head, (q k v), d_head]``; it is split into our W_Q, W_K, W_V.
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange

from ssmlens.models.checkpoint import CheckpointError
from ssmlens.models.loader import build_loaded, read_json_config, read_state
from ssmlens.models.transformer import Transformer, TransformerConfig

_ACT = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new"}


def _rope(cfg: dict) -> tuple[float, float]:
    """(partial rotary factor, base) from transformers 5's ``rope_parameters`` or the
    older ``rotary_pct`` / ``rotary_emb_base`` fields."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"only the default rotary embedding is supported, got rope_type {rope['rope_type']!r}")
    pct = rope.get("partial_rotary_factor", cfg.get("rotary_pct", 0.25))
    base = rope.get("rope_theta", cfg.get("rotary_emb_base", 10000.0))
    return float(pct), float(base)


def _hf_config(cfg: dict) -> dict:
    """Map transformers' GPTNeoXConfig fields onto our TransformerConfig."""
    try:
        d_model, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
        act = cfg.get("hidden_act", "gelu")
        if act not in _ACT:
            raise CheckpointError(f"hidden_act {act!r} is not supported (supported: {', '.join(_ACT)})")
        pct, base = _rope(cfg)
        out = dict(
            vocab_size=cfg["vocab_size"], d_model=d_model, n_layers=cfg["num_hidden_layers"], n_heads=n_heads,
            d_mlp=cfg["intermediate_size"], n_ctx=cfg.get("max_position_embeddings", 2048),
            positional="rotary", rotary_dim=int((d_model // n_heads) * pct), rotary_base=base,
            norm="layer", norm_eps=cfg.get("layer_norm_eps", 1e-5),
            tie_embeddings=cfg.get("tie_word_embeddings", False), bias=cfg.get("attention_bias", True),
            parallel_attn_mlp=cfg.get("use_parallel_residual", True), act_fn=_ACT[act],
        )
    except KeyError as e:
        raise CheckpointError(f"Hugging Face GPT-NeoX config.json lacks field {e.args[0]!r}") from None
    return out


def _convert(state: dict[str, torch.Tensor], n_heads: int) -> dict[str, torch.Tensor]:
    """transformers' names -> ours; ``query_key_value`` split into W_Q, W_K, W_V."""
    out = {}
    for key, value in state.items():
        if key.endswith((".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")):
            continue  # buffers of old transformers versions, not weights
        if key == "embed_out.weight":
            out["unembed.weight"] = value
            continue
        key = key.removeprefix("gpt_neox.")
        key = (key.replace("embed_in.", "embed.").replace("final_layer_norm.", "ln_final.")
               .replace("layers.", "blocks.", 1).replace("input_layernorm.", "ln1.")
               .replace("post_attention_layernorm.", "ln2.").replace("attention.dense.", "attn.W_O.")
               .replace("mlp.dense_h_to_4h.", "mlp.W_in.").replace("mlp.dense_4h_to_h.", "mlp.W_out."))
        if ".attention.query_key_value." in key:
            prefix, kind = key.split(".attention.query_key_value.")
            per_head = rearrange(value, "(h three e) ... -> three (h e) ...", h=n_heads, three=3)
            for name, part in zip(("W_Q", "W_K", "W_V"), per_head):
                out[f"{prefix}.attn.{name}.{kind}"] = part.contiguous()
            continue
        out[key] = value
    return out


def load_hf_gpt_neox(path: str | Path, device: str | torch.device | None = "cpu", dtype: torch.dtype | None = None):
    """A ``Transformer`` holding the GPT-NeoX checkpoint in ``path``."""
    path = Path(path)
    cfg = TransformerConfig(**_hf_config(read_json_config(path)))
    state = _convert(read_state(path), cfg.n_heads)
    if cfg.tie_embeddings:
        state.pop("unembed.weight", None)
    return build_loaded(Transformer, cfg, state, str(path), device=device, dtype=dtype)
