"""Token-mixing view of Mamba-1's mixer (``ssmlens.models.mamba_mixer.MambaMixer``): the
selective scan's implicit attention per channel (``ssmlens.probes.mixing_selective``).

Used by every model built on that mixer: Mamba, MoE-Mamba, and B'MOJO's fading memory
(``token_mixing(model, tokens, layer, slot="mixer")``). From the hooked inputs of one
forward: u = ``hook_conv`` (the scan input), Δ = ``hook_delta``, B, C, z; then

    y_t = Σ_{s≤t} α[t, s] u_s + D u_t,     out = out_proj(y ⊙ silu(z)).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ssmlens.models.mamba_mixer import MambaMixer
from ssmlens.probes.mixing import MixingResult, register_mixing
from ssmlens.probes.mixing_selective import selective_mixing


@register_mixing(MambaMixer)
def mamba_mixing(model, layer: int, scope: str, mixer: MambaMixer, tokens: Tensor) -> MixingResult:
    """α ``[b, d_inner, q, k]`` of the mixer at ``scope`` (e.g. ``blocks.0.mixer``)."""
    names = {h: f"{scope}.hook_{h}" for h in ("conv", "delta", "B", "C", "z", "out")}
    _, cache = model.run_with_cache(tokens, names_filter=list(names.values()))
    u, delta, B, C, z = (cache[names[h]].double() for h in ("conv", "delta", "B", "C", "z"))
    proj = mixer.out_proj
    weight = proj.weight.detach().double()
    bias = None if proj.bias is None else proj.bias.detach().double()

    def post(y: Tensor) -> Tensor:  # [b, q, d_inner, 1] -> [b, q, d_model]
        return F.linear(y[..., 0] * F.silu(z), weight, bias)

    return MixingResult(
        matrix=selective_mixing(delta, mixer.A.detach(), B, C),
        values=u[..., None], skip=(mixer.D.detach().double() * u)[..., None], post=post,
        output=cache[names["out"]], group="channel", kind="selective_scan", hook=names["out"],
    )
