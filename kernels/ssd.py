"""Chunked SSD scan (state space duality, Dao & Gu 2024): Mamba-2's fast path.

The recurrence is Mamba-2's: per head h (scalar A_h, Δ shared by the head's channels p)
and per group g of heads (B, C shared by them),

    h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·x_t ⊗ B_t      (h_t: [d_head, d_state] per head)
    y_t = h_t·C_t + D·x_t

Within a chunk of T positions the output is a masked "attention" of C against B with
the decays exp(Σ A·Δ) as the mask (matrix products); between chunks only the chunk-end
states are carried, one step per chunk. Nothing of size [L, d_head, d_state] is ever
formed, so it is the path for big models that do not ask for hidden states. States on
demand and state overrides go through ``ssmlens.kernels.selective_scan`` (the Mamba-1
scan with Δ and A expanded to channels: DESIGN §3), whose float64 ``reference`` this
function must equal (tests/test_mamba2.py). Computed in fp32; differentiable by autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

CHUNK = 64


def segment_sum(a: Float[Tensor, "... t"]) -> Float[Tensor, "... t s"]:
    """``out[..., t, s] = a[s+1] + … + a[t]`` for s ≤ t (0 on the diagonal), −inf above.

    Summed by a masked cumulative sum rather than as a difference of prefix sums, so a
    long chunk of large decays keeps its precision."""
    T = a.shape[-1]
    a = a[..., :, None].expand(*a.shape, T)  # [..., t, s] = a[t]
    strictly_below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    sums = a.masked_fill(~strictly_below, 0.0).cumsum(dim=-2)
    below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    return sums.masked_fill(~below, float("-inf"))


def ssd_scan(
    x: Float[Tensor, "batch L head d_head"],
    delta: Float[Tensor, "batch L head"],
    A: Float[Tensor, " head"],
    B: Float[Tensor, "batch L group d_state"],
    C: Float[Tensor, "batch L group d_state"],
    D: Float[Tensor, " head"] | None = None,
    initial_state: Float[Tensor, "batch head d_head d_state"] | None = None,
    chunk: int = CHUNK,
) -> tuple[Float[Tensor, "batch L head d_head"], Float[Tensor, "batch head d_head d_state"]]:
    """Mamba-2 scan by chunks. ``delta`` is Δ itself (after softplus and bias); A < 0.

    Returns (y fp32 ``[b, L, head, d_head]`` with the D skip, final state fp32
    ``[b, head, d_head, d_state]``)."""
    b, L, H, P = x.shape
    g = B.shape[2]
    if H % g:
        raise ValueError(f"ssd_scan: {g} groups do not divide {H} heads")
    if delta.shape != (b, L, H) or A.shape != (H,) or B.shape[:2] != (b, L) or C.shape != B.shape:
        raise ValueError(f"ssd_scan: shapes x {tuple(x.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)} do not fit together")
    f32 = torch.float32
    pad = (-L) % chunk
    x32, dt = x.to(f32), delta.to(f32)
    xdt = F.pad(x32 * dt[..., None], (0, 0, 0, 0, 0, pad))
    a = F.pad(dt * A.to(f32), (0, 0, 0, pad))  # log-decay per position and head; padding decays nothing
    Bc, Cc = (F.pad(t.to(f32), (0, 0, 0, 0, 0, pad)) for t in (B, C))

    # Chunks c of T positions t (s: a second position axis); heads as (group g, head-in-group r).
    xdt = rearrange(xdt, "b (c t) (g r) p -> b c t g r p", t=chunk, g=g)
    a = rearrange(a, "b (c t) (g r) -> b c g r t", t=chunk, g=g)
    Bc = rearrange(Bc, "b (c t) g n -> b c t g n", t=chunk)
    Cc = rearrange(Cc, "b (c t) g n -> b c t g n", t=chunk)
    a_cum = a.cumsum(dim=-1)  # b c g r t: Σ of log-decays from the chunk start to t

    # 1. Within a chunk: y_t = Σ_{s≤t} (C_t·B_s)·exp(Σ_{s<k≤t} a_k)·Δ_s x_s.
    scores = torch.einsum("bctgn,bcsgn->bcgts", Cc, Bc)  # shared by the heads of a group
    weights = scores[:, :, :, None] * torch.exp(segment_sum(a))  # b c g r t s: decay-masked
    y_diag = torch.einsum("bcgrts,bcsgrp->bctgrp", weights, xdt)

    # 2. The state each chunk adds by its end: Σ_s exp(Σ_{s<k≤end} a_k)·Δ_s x_s ⊗ B_s.
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # b c g r t
    decayed = xdt * rearrange(to_end, "b c g r t -> b c t g r 1")
    chunk_states = torch.einsum("bctgn,bctgrp->bcgrpn", Bc, decayed)

    # 3. Between chunks: carry the state across, one step per chunk.
    h = (rearrange(initial_state.to(f32), "b (g r) p n -> b g r p n", g=g) if initial_state is not None
         else xdt.new_zeros(b, g, H // g, P, B.shape[-1]))
    chunk_decay = torch.exp(a_cum[..., -1])  # b c g r
    starts = []
    for c in range(chunk_states.shape[1]):
        starts.append(h)
        h = chunk_decay[:, c, ..., None, None] * h + chunk_states[:, c]
    starts = torch.stack(starts, dim=1)  # b c g r p n: the state before each chunk

    # 4. What the carried-in state contributes inside the chunk: C_t·exp(Σ_{k≤t} a_k)·h_start.
    y_off = torch.einsum("bctgn,bcgrpn->bctgrp", Cc, starts) * rearrange(torch.exp(a_cum), "b c g r t -> b c t g r 1")

    y = rearrange(y_diag + y_off, "b c t g r p -> b (c t) (g r) p")[:, :L]
    if D is not None:
        y = y + x32 * D.to(f32)[:, None]
    return y, rearrange(h, "b g r p n -> b (g r) p n")
