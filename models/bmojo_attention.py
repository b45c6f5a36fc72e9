"""B'MOJO attention: one softmax over window ∪ eidetic memory ∪ the query's fading token.

Key axis layout of ``hook_attn_scores`` / ``hook_pattern`` ``[b, head, q, L + 1]``:

- columns ``0 … L−1``: token s of the sequence (key u_s, value u_s projected), in
  source order, as in a Transformer pattern. Query t sees column s if s is in its
  window (t − w < s ≤ t) or in its memory M_t (written, s ≤ t − w, among the
  ``memory_size`` most recent writes); every other column is 0 in the pattern
  (−inf in the scores).
- column ``L``: the query's own fading token f_t (the Mamba mixer output at t);
  one column for every query, although each query sees a different f_t.

So the token columns are comparable with a Transformer's pattern, and
``split_pattern`` separates window, memory and fading parts: since windows and
memories are disjoint and the pattern vanishes elsewhere, the memory part is just
the token columns older than the window.

The fading keys and values have their own hooks ``hook_k_fading`` / ``hook_v_fading``
``[b, pos, head, d_head]`` (entry t belongs to query t). With rotary positions the
fading key of query t is rotated to position t, so its score does not depend on
position. Rows with no visible key (window 0, empty memory, no SSM) output 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.models.attention import Attention, rotary
from ssmlens.models.bmojo_memory import window_mask
from ssmlens.models.resume import Resume


class PatternParts(NamedTuple):
    window: Tensor  # [b, head, q, L]: token columns inside the query's window, 0 elsewhere
    memory: Tensor  # [b, head, q, L]: token columns older than the window (the memory), 0 elsewhere
    fading: Tensor  # [b, head, q]: weight of the query's own fading token
    window_mask: Tensor  # [q, L] bool


def split_pattern(pattern: Float[Tensor, "batch head q k"], cfg_or_window) -> PatternParts:
    """Split a B'MOJO ``hook_pattern`` ``[b, head, L, L + 1]`` into window, memory and
    fading parts. ``cfg_or_window``: a ``BMojoConfig`` (or anything with ``.window``)
    or the window length. ``window + memory + fading`` sums to 1 on every row."""
    window = int(getattr(cfg_or_window, "window", cfg_or_window))
    L = pattern.shape[-2]
    if pattern.shape[-1] != L + 1:
        raise ValueError(f"a B'MOJO pattern has L + 1 = {L + 1} key columns, got shape {tuple(pattern.shape)}")
    tokens = pattern[..., :L]
    wmask = window_mask(L, window, device=pattern.device)
    return PatternParts(tokens * wmask, tokens * ~wmask, pattern[..., L], wmask)


class BMojoAttention(Attention):
    """Multi-head attention over window ∪ memory ∪ fading token (DESIGN §4, step 5)."""

    def __init__(self, d_model: int, n_heads: int, positional: str = "rotary", bias: bool = True):
        super().__init__(d_model, n_heads, positional, bias)
        self.hook_k_fading = HookPoint()
        self.hook_v_fading = HookPoint()

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        fading: Float[Tensor, "batch pos d_model"],
        visible: Bool[Tensor, "batch q k"],
        fading_visible: bool = True,
        resume: Resume | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """x: block input (queries and token keys/values); fading: f_t per query;
        visible: window ∪ memory mask over token keys; fading_visible: False drops
        the fading column (no SSM). With ``resume`` (``ssmlens.models.resume``), x and fading
        hold each row's window, visible is ``[R, window, L]`` and the token keys and
        values of every position are the cached ones with the window's written in."""
        q = self.hook_q(self.split_heads(self.W_Q(x)))
        k = self.hook_k(self.split_heads(self.W_K(x)))
        v = self.hook_v(self.split_heads(self.W_V(x)))
        kf = self.hook_k_fading(self.split_heads(self.W_K(fading)))
        vf = self.hook_v_fading(self.split_heads(self.W_V(fading)))
        pos = None
        if resume is not None:
            k, v, pos = resume.scatter(resume.full("hook_k"), k), resume.scatter(resume.full("hook_v"), v), \
                resume.positions
        if self.positional == "rotary":
            q, k, kf = rotary(q, positions=pos), rotary(k), rotary(kf, positions=pos)
        b, L = x.shape[:2]
        fad = torch.full((b, L), fading_visible, dtype=torch.bool, device=x.device)
        empty = ~(visible.any(-1) | fad)  # b q: rows with nothing to attend to
        if self.hook_pattern.listened or self.hook_attn_scores.listened:
            z = self.explicit_attention(q, k, v, kf, vf, visible, fad, empty)
        else:
            z = self.fused_attention(q, k, v, kf, vf, visible, fad | empty, empty)
        z = self.hook_z(z)
        return self.hook_out(self.W_O(rearrange(z, "b p h e -> b p (h e)")))

    def explicit_attention(self, q, k, v, kf, vf, visible, fad, empty) -> Tensor:
        """Reference path: scores and pattern ``[b, head, q, L + 1]`` materialized and hooked."""
        L = k.shape[1]
        scale = 1.0 / math.sqrt(self.d_head)
        s_tok = einsum(q, k, "b q h e, b k h e -> b h q k") * scale
        s_fad = einsum(q, kf, "b q h e, b q h e -> b h q")[..., None] * scale
        s_tok = s_tok.masked_fill(~visible[:, None], float("-inf"))
        s_fad = s_fad.masked_fill(~fad[:, None, :, None], float("-inf"))
        scores = self.hook_attn_scores(torch.cat([s_tok, s_fad], dim=-1))
        # empty rows: softmax over zeros, then zeroed, so no NaN reaches values or grads
        safe = scores.masked_fill(empty[:, None, :, None], 0.0)
        pattern = safe.softmax(dim=-1).masked_fill(empty[:, None, :, None], 0.0)
        pattern = self.hook_pattern(pattern)
        z = einsum(pattern[..., :L], v, "b h q k, b k h e -> b q h e")
        return z + rearrange(pattern[..., L], "b h q -> b q h 1") * vf

    def fused_attention(self, q, k, v, kf, vf, visible, fad, empty) -> Tensor:
        """Fast path: scaled_dot_product_attention over 2L keys (tokens, then every
        query's fading token) with a boolean mask whose fading half is diagonal."""
        L = q.shape[1]
        diag = torch.eye(L, dtype=torch.bool, device=q.device)[None] & fad[:, :, None]
        mask = torch.cat([visible & ~empty[:, :, None], diag], dim=-1)[:, None]  # b 1 q 2L
        keys = torch.cat([k, kf], dim=1)
        vals = torch.cat([v, vf], dim=1)
        z = F.scaled_dot_product_attention(
            rearrange(q, "b p h e -> b h p e"), rearrange(keys, "b p h e -> b h p e"),
            rearrange(vals, "b p h e -> b h p e"), attn_mask=mask,
        )
        z = rearrange(z, "b h p e -> b p h e")
        return z.masked_fill(empty[:, :, None, None], 0.0)
