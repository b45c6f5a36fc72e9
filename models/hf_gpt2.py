"""Load a Hugging Face GPT-2 checkpoint directory (``GPT2LMHeadModel``) into our ``Transformer``.

GPT-2: learned positions, LayerNorm with bias, the tanh GELU (``gelu_new``), unembedding
tied to the token embedding. Its ``Conv1D`` layers store weights as ``[in, out]``
(transposed against ``nn.Linear``); ``c_attn`` holds q, k and v side by side.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssmlens.models.checkpoint import CheckpointError
from ssmlens.models.loader import build_loaded, read_json_config, read_state
from ssmlens.models.transformer import Transformer, TransformerConfig

_ACT = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu_fast": "gelu_new", "gelu": "gelu"}


def _hf_config(cfg: dict) -> dict:
    """Map transformers' GPT2Config fields onto our TransformerConfig."""
    try:
        d_model = cfg["n_embd"]
        act = cfg.get("activation_function", "gelu_new")
        if act not in _ACT:
            raise CheckpointError(f"activation_function {act!r} is not supported (supported: {', '.join(_ACT)})")
        for flag, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                           ("add_cross_attention", False)):
            if cfg.get(flag, want) != want:
                raise CheckpointError(f"GPT-2 with {flag}={cfg[flag]} is not supported")
        out = dict(
            vocab_size=cfg["vocab_size"], d_model=d_model, n_layers=cfg["n_layer"], n_heads=cfg["n_head"],
            d_mlp=cfg.get("n_inner") or 4 * d_model, n_ctx=cfg["n_positions"], positional="learned",
            norm="layer", norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=cfg.get("tie_word_embeddings", True), bias=True, act_fn=_ACT[act],
        )
    except KeyError as e:
        raise CheckpointError(f"Hugging Face GPT-2 config.json lacks field {e.args[0]!r}") from None
    return out


_NAMES = {"attn.c_proj": "attn.W_O", "mlp.c_fc": "mlp.W_in", "mlp.c_proj": "mlp.W_out"}


def _convert(state: dict[str, torch.Tensor], d_model: int) -> dict[str, torch.Tensor]:
    """transformers' names -> ours; Conv1D weights transposed, ``c_attn`` split in q, k, v."""
    out = {}
    for key, value in state.items():
        if key == "lm_head.weight":
            out["unembed.weight"] = value
            continue
        key = key.removeprefix("transformer.")
        if key.endswith((".attn.bias", ".attn.masked_bias")) and value.ndim != 1:
            continue  # causal-mask buffers of old transformers versions
        if key.startswith(("wte.", "wpe.", "ln_f.")):
            name = {"wte.weight": "embed.weight", "wpe.weight": "pos_embed"}.get(key, key.replace("ln_f.", "ln_final."))
            out[name] = value
            continue
        key = key.replace("h.", "blocks.", 1).replace(".ln_1.", ".ln1.").replace(".ln_2.", ".ln2.")
        prefix, _, rest = key.partition(".")
        layer, _, module_param = rest.partition(".")
        module, kind = module_param.rsplit(".", 1)
        block = f"{prefix}.{layer}"
        if module == "attn.c_attn":
            parts = value.split(d_model, dim=-1)  # [in, 3·d] (weight) or [3·d] (bias)
            for name, part in zip(("W_Q", "W_K", "W_V"), parts):
                out[f"{block}.attn.{name}.{kind}"] = (part.T if kind == "weight" else part).contiguous()
        elif module in _NAMES:
            out[f"{block}.{_NAMES[module]}.{kind}"] = (value.T if kind == "weight" else value).contiguous()
        else:
            out[key] = value
    return out


def load_hf_gpt2(path: str | Path, device: str | torch.device | None = "cpu", dtype: torch.dtype | None = None):
    """A ``Transformer`` holding the GPT-2 checkpoint in ``path``."""
    path = Path(path)
    cfg = TransformerConfig(**_hf_config(read_json_config(path)))
    state = _convert(read_state(path), cfg.d_model)
    if cfg.tie_embeddings:
        state.pop("unembed.weight", None)
    return build_loaded(Transformer, cfg, state, str(path), device=device, dtype=dtype)
