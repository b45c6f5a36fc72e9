"""Token-mixing view of Mamba-2's mixer (``ssmlens.models.mamba2_mixer.Mamba2Mixer``): the
SSD scan's implicit attention per head.

Mamba-2's A is one scalar per head and its B, C are shared by a group of heads, so the
scan h_t = exp(Δ_t A_h) h_{t−1} + Δ_t u_t ⊗ B_t, y_t = h_t C_t + D_h u_t unrolls, per head
h of group g(h), into y_t = Σ_{s≤t} α[h, t, s] u_s + D_h u_t with one matrix per head
(the "structured masked attention" of the SSD paper; Dao & Gu 2024):

    α[h, t, s] = (C_t^{g(h)} · B_s^{g(h)}) · exp(S_t[h] − S_s[h]) · Δ_s[h],   s ≤ t,
    S_t[h]     = Σ_{r≤t} Δ_r[h] A_h                                     (cumulative log decay)

From the hooked inputs of one forward: u = ``hook_conv`` (``[b, pos, (head d_head)]``),
Δ = ``hook_delta`` ``[b, pos, head]``, B, C = ``hook_B``/``hook_C`` ``[b, pos, group,
d_state]``, z = ``hook_z``; then out = out_proj(RMSNorm_groups(y ⊙ silu(z)) · w). The
exponent S_t − S_s is formed before the exponential and is ≤ 0 wherever it is used, so
nothing overflows however long the sequence. ``ssd_mixing_reference`` is the loop over
(t, s) with the product of per-step decays (tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from jaxtyping import Float
from torch import Tensor

from ssmlens.models.mamba2_mixer import Mamba2Mixer
from ssmlens.probes.mixing import MixingResult, register_mixing


def ssd_mixing(delta: Float[Tensor, "batch pos head"], A: Float[Tensor, " head"],
               B: Float[Tensor, "batch pos group d_state"], C: Float[Tensor, "batch pos group d_state"],
               ) -> Float[Tensor, "batch head q k"]:
    """α ``[b, head, q, k]`` (float64, 0 above the diagonal) of the module docstring."""
    delta, A, B, C = (x.detach().double() for x in (delta, A, B, C))
    L, H, G = delta.shape[1], delta.shape[2], B.shape[2]
    S = (delta * A).cumsum(1)  # b L h
    causal = torch.ones(L, L, dtype=torch.bool, device=delta.device).tril()
    seg = rearrange(S, "b t h -> b h t 1") - rearrange(S, "b s h -> b h 1 s")
    decay = seg.masked_fill(~causal, float("-inf")).exp()
    CB = repeat(einsum(C, B, "b t g n, b s g n -> b g t s"), "b g t s -> b (g r) t s", r=H // G)
    return CB * decay * rearrange(delta, "b s h -> b h 1 s")


def ssd_mixing_reference(delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Loop version of ``ssd_mixing``: α[h, t, s] = C_t·Π_{s<r≤t} exp(Δ_r A_h)·Δ_s B_s."""
    delta, A, B, C = (x.detach().double() for x in (delta, A, B, C))
    b, L, H = delta.shape
    r = H // B.shape[2]
    alpha = torch.zeros(b, H, L, L, dtype=torch.float64)
    for h in range(H):
        g = h // r
        for t in range(L):
            for s in range(t + 1):
                decay = torch.exp(delta[:, s + 1:t + 1, h] * A[h]).prod(1)
                alpha[:, h, t, s] = (C[:, t, g] * B[:, s, g]).sum(-1) * decay * delta[:, s, h]
    return alpha


def _gated_norm(mixer: Mamba2Mixer, y: Tensor, z: Tensor) -> Tensor:
    """The mixer's RMSNorm_groups(y ⊙ silu(z))·w in float64 (``GatedRMSNorm``)."""
    norm = mixer.norm
    gated = rearrange(y * F.silu(z), "... (g c) -> ... g c", c=norm.group_size)
    normed = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + norm.eps)
    return norm.weight.detach().double() * rearrange(normed, "... g c -> ... (g c)")


@register_mixing(Mamba2Mixer)
def mamba2_mixing(model, layer: int, scope: str, mixer: Mamba2Mixer, tokens: Tensor) -> MixingResult:
    """α ``[b, head, q, k]`` of the mixer at ``scope`` (module docstring)."""
    names = {h: f"{scope}.hook_{h}" for h in ("conv", "delta", "B", "C", "z", "out")}
    _, cache = model.run_with_cache(tokens, names_filter=list(names.values()))
    u, delta, B, C, z = (cache[names[h]].double() for h in ("conv", "delta", "B", "C", "z"))
    u = rearrange(u, "b l (h p) -> b l h p", p=mixer.cfg.d_head)
    proj = mixer.out_proj
    weight = proj.weight.detach().double()
    bias = None if proj.bias is None else proj.bias.detach().double()

    def post(y: Tensor) -> Tensor:  # [b, q, head, d_head] -> [b, q, d_model]
        return F.linear(_gated_norm(mixer, rearrange(y, "b q h p -> b q (h p)"), z), weight, bias)

    return MixingResult(
        matrix=ssd_mixing(delta, mixer.A, B, C), values=u,
        skip=mixer.D.detach().double()[:, None] * u, post=post,
        output=cache[names["out"]], group="head", kind="ssd_scan", hook=names["out"],
    )
