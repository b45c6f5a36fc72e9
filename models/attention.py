"""Causal multi-head attention with TransformerLens-style hooks.

q, k, v ``[b, pos, head, d_head]`` pass through ``hook_q/k/v`` (before rotary, as
in TransformerLens). The explicit pattern ``[b, head, q, k]`` is computed only when
``hook_attn_scores`` or ``hook_pattern`` is listened to; otherwise the fused
``scaled_dot_product_attention`` runs. ``hook_z`` is the per-head output and
``hook_out`` the projection back to d_model.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.models.resume import Resume


def rotary(x: Tensor, base: float = 10000.0, positions: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Rotary position embedding (GPT-NeoX half rotation) of x ``[b, pos, head, d_head]``;
    ``positions`` int64 ``[b, pos]`` gives each slot's position (default 0 … pos − 1);
    ``dim``: only the first ``dim`` dimensions of a head rotate (Pythia's partial
    rotary), the others pass through (default: all)."""
    pos, d = x.shape[1], x.shape[-1] if dim is None else dim
    half = d // 2
    inv = base ** (-torch.arange(0, half, device=x.device, dtype=torch.float32) / half)
    if positions is None:
        ang = torch.arange(pos, device=x.device, dtype=torch.float32)[:, None] * inv[None]  # pos half
        cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    else:
        ang = positions.to(torch.float32)[..., None] * inv  # b pos half
        cos, sin = ang.cos()[:, :, None], ang.sin()[:, :, None]
    x1, x2 = x[..., :half].float(), x[..., half : 2 * half].float()
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half :].float()], dim=-1)
    return out.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, positional: str = "learned", bias: bool = True,
                 rotary_dim: int | None = None, rotary_base: float = 10000.0):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.positional = positional
        self.rotary_dim, self.rotary_base = rotary_dim, rotary_base
        self.W_Q = nn.Linear(d_model, d_model, bias=bias)
        self.W_K = nn.Linear(d_model, d_model, bias=bias)
        self.W_V = nn.Linear(d_model, d_model, bias=bias)
        self.W_O = nn.Linear(d_model, d_model, bias=bias)
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "out"):
            setattr(self, f"hook_{name}", HookPoint())

    def rotate(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """``rotary`` with this layer's base and rotated dimensions."""
        return rotary(x, self.rotary_base, positions=positions, dim=self.rotary_dim)

    def split_heads(self, x: Tensor) -> Tensor:
        return rearrange(x, "b p (h e) -> b p h e", h=self.n_heads)

    def forward(self, x: Tensor, resume: Resume | None = None) -> Tensor:
        """x ``[b, pos, d_model]`` (already normalized) -> ``[b, pos, d_model]``.

        With ``resume`` (``ssmlens.models.resume``), x holds each row's window: its queries
        read the cached keys and values of every earlier position."""
        q = self.hook_q(self.split_heads(self.W_Q(x)))
        k = self.hook_k(self.split_heads(self.W_K(x)))
        v = self.hook_v(self.split_heads(self.W_V(x)))
        if resume is not None:
            return self.hook_out(self.W_O(rearrange(self.resumed(q, k, v, resume), "b p h e -> b p (h e)")))
        if self.positional == "rotary":
            q, k = self.rotate(q), self.rotate(k)
        if self.hook_pattern.listened or self.hook_attn_scores.listened:
            z = self.explicit_attention(q, k, v)
        else:
            z = F.scaled_dot_product_attention(
                rearrange(q, "b p h e -> b h p e"), rearrange(k, "b p h e -> b h p e"),
                rearrange(v, "b p h e -> b h p e"), is_causal=True,
            )
            z = rearrange(z, "b h p e -> b p h e")
        z = self.hook_z(z)
        return self.hook_out(self.W_O(rearrange(z, "b p h e -> b p (h e)")))

    def resumed(self, q: Tensor, k: Tensor, v: Tensor, resume: Resume) -> Tensor:
        """z ``[R, window, head, d_head]`` of the window's queries over every key
        (cached ones, the window's own written over them), causal in absolute positions."""
        k_all, v_all = resume.full("hook_k"), resume.full("hook_v")  # R L h e, fresh copies: written in place
        at = (torch.arange(k.shape[0], device=k.device)[:, None], resume.positions)
        k_all[at], v_all[at] = k.to(k_all.dtype), v.to(v_all.dtype)
        if self.positional == "rotary":
            q, k_all = self.rotate(q, positions=resume.positions), self.rotate(k_all)
        visible = resume.key_visible()  # R window L
        if self.hook_pattern.listened or self.hook_attn_scores.listened:
            return self.hook_z(self.explicit_attention(q, k_all, v_all, visible[:, None]))
        z = F.scaled_dot_product_attention(
            rearrange(q, "b p h e -> b h p e"), rearrange(k_all, "b p h e -> b h p e"),
            rearrange(v_all, "b p h e -> b h p e"), attn_mask=visible[:, None],
        )
        return self.hook_z(rearrange(z, "b h p e -> b p h e"))

    def forward_read(self, x_new: Float[Tensor, "n d_model"], row: Int[Tensor, " n"], pos: Int[Tensor, " n"],
                     x_q: Float[Tensor, "row q d_model"], at: Int[Tensor, "row q"], resume: Resume
                     ) -> Float[Tensor, "row q d_model"]:
        """Attention output at the read positions only, for ``TransformerBlock.forward_read``
        (no hook listens to this module): queries from x_q (normalized inputs at absolute
        positions ``at``) over every key of each row, the cached ones with new keys and
        values written at (``row``, absolute ``pos``) from ``x_new``; causal in absolute
        positions. Same arithmetic as ``resumed``, restricted to the rows read."""
        k_all, v_all = resume.full("hook_k"), resume.full("hook_v")  # R L h e, fresh copies
        if row.numel():
            k_all[row, pos] = self.W_K(x_new).unflatten(-1, (self.n_heads, self.d_head)).to(k_all.dtype)
            v_all[row, pos] = self.W_V(x_new).unflatten(-1, (self.n_heads, self.d_head)).to(v_all.dtype)
        q = self.split_heads(self.W_Q(x_q))
        if self.positional == "rotary":
            q, k_all = self.rotate(q, positions=at), self.rotate(k_all)
        keys = torch.arange(k_all.shape[1], device=at.device)
        visible = keys[None, None, :] <= at[:, :, None]  # R q L
        z = F.scaled_dot_product_attention(
            rearrange(q, "b p h e -> b h p e"), rearrange(k_all, "b p h e -> b h p e"),
            rearrange(v_all, "b p h e -> b h p e"), attn_mask=visible[:, None],
        )
        return self.W_O(rearrange(z, "b h p e -> b p (h e)"))

    def explicit_attention(self, q: Tensor, k: Tensor, v: Tensor, visible: Tensor | None = None) -> Tensor:
        """Reference attention with the pattern materialized and hooked; ``visible``
        (bool, broadcastable to ``[b, head, q, k]``) defaults to the causal mask."""
        scores = einsum(q, k, "b q h e, b k h e -> b h q k") / math.sqrt(self.d_head)
        if visible is None:
            visible = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device).tril()
        scores = self.hook_attn_scores(scores.masked_fill(~visible, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        return einsum(pattern, v, "b h q k, b k h e -> b q h e")
