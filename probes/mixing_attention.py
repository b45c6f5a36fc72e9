"""Token-mixing views of softmax attention: the Transformer's causal attention and
B'MOJO's attention over window ∪ eidetic memory ∪ the query's fading token.

Both are recomputed from the hooked q, k, v of one forward (rotary applied as the
module applies it), not read from ``hook_pattern``: the check that the matrix
reproduces ``attn.hook_out`` is then a check of the view, not of a cached copy.

B'MOJO (``ssmlens.models.bmojo_attention``): columns 0 … L−1 are the sequence's tokens,
visible to query t through its window (t − w < s ≤ t) or its memory (the
``memory_size`` most recent writes s ≤ t − w, from ``memory.hook_write``); column L is
the query's own fading token f_t, with its own value ``hook_v_fading`` (a per-query
column). Rows with nothing visible are 0, as in the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from ssmlens.models.attention import Attention, rotary
from ssmlens.models.bmojo_attention import BMojoAttention
from ssmlens.models.bmojo_memory import memory_mask, window_mask
from ssmlens.probes.mixing import MixingResult, register_mixing


def _projection(attn: Attention):
    """W_O as a function of per-head outputs ``[b, q, head, d_head]`` (float64)."""
    weight = attn.W_O.weight.detach().double()
    bias = None if attn.W_O.bias is None else attn.W_O.bias.detach().double()
    return lambda z: F.linear(rearrange(z, "b q h e -> b q (h e)"), weight, bias)


def _scores(q: Tensor, k: Tensor, d_head: int) -> Tensor:
    return einsum(q.double(), k.double(), "b q h e, b k h e -> b h q k") / math.sqrt(d_head)


@register_mixing(Attention)
def attention_mixing(model, layer: int, scope: str, attn: Attention, tokens: Tensor) -> MixingResult:
    """The causal softmax pattern ``[b, head, q, k]`` of the attention at ``scope``."""
    names = {h: f"{scope}.hook_{h}" for h in ("q", "k", "v", "out")}
    _, cache = model.run_with_cache(tokens, names_filter=list(names.values()))
    q, k, v = cache[names["q"]], cache[names["k"]], cache[names["v"]]
    if attn.positional == "rotary":
        q, k = rotary(q), rotary(k)
    L = q.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    pattern = _scores(q, k, attn.d_head).masked_fill(~causal, float("-inf")).softmax(-1)
    return MixingResult(matrix=pattern, values=v.double(), post=_projection(attn), output=cache[names["out"]],
                        group="head", kind="softmax_attention", hook=names["out"])


@register_mixing(BMojoAttention)
def bmojo_mixing(model, layer: int, scope: str, attn: BMojoAttention, tokens: Tensor) -> MixingResult:
    """One softmax per head over ``[window ∪ memory token columns | fading]``: ``[b, head, q, L + 1]``."""
    cfg = model.blocks[layer].cfg
    names = {h: f"{scope}.hook_{h}" for h in ("q", "k", "v", "k_fading", "v_fading", "out")}
    write_name = f"blocks.{layer}.memory.hook_write"
    _, cache = model.run_with_cache(tokens, names_filter=[*names.values(), write_name])
    q, k, v, kf, vf = (cache[names[h]] for h in ("q", "k", "v", "k_fading", "v_fading"))
    if attn.positional == "rotary":
        q, k, kf = rotary(q), rotary(k), rotary(kf)  # the fading key of query t sits at position t
    b, L = q.shape[:2]
    visible = window_mask(L, cfg.window, q.device)[None] | memory_mask(cache[write_name], cfg.window,
                                                                       cfg.memory_size)
    s_tok = _scores(q, k, attn.d_head).masked_fill(~visible[:, None], float("-inf"))
    s_fad = einsum(q.double(), kf.double(), "b q h e, b q h e -> b h q")[..., None] / math.sqrt(attn.d_head)
    if not cfg.use_ssm:
        s_fad = torch.full_like(s_fad, float("-inf"))
    scores = torch.cat([s_tok, s_fad], dim=-1)
    empty = torch.isinf(scores).all(-1, keepdim=True)  # rows with nothing to attend to output 0
    pattern = scores.masked_fill(empty, 0.0).softmax(-1).masked_fill(empty, 0.0)
    return MixingResult(matrix=pattern, values=v.double(), extra_values=vf.double()[:, :, None],
                        post=_projection(attn), output=cache[names["out"]], group="head", kind="bmojo_attention",
                        hook=names["out"], column_labels=[str(i) for i in range(L)] + ["fading"])
