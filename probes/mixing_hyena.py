"""Token-mixing view of Hyena's mixer (``ssmlens.models.hyena.HyenaMixer``): its long
convolutions' Toeplitz matrices between their gates.

Per channel c, with T_n the causal Toeplitz matrix of the n-th long filter (lag 0
including its skip β; ``HyenaMixer.conv_kernels``, ``ssmlens.kernels.causal_toeplitz``)
and x^n the n-th gate (``hook_x{n}``, after the short convolution), the Hyena recurrence
z^{n+1} = x^n ⊙ (T_n z^n), z¹ = v, unrolls to

    M[c] = diag(x^N_c) T_N[c] ⋯ diag(x^1_c) T_1[c]     values v_c  (``hook_v``)
    out  = out_proj(z^{N+1}),   z^{N+1}_c = M[c] v_c

(order N = 2 by default: M = diag(x²) T_2 diag(x¹) T_1). The filters do not depend on the
input; the gates do, so M is input-dependent only through them. ``parts`` holds each
filter's Toeplitz matrix ``T{n}`` ``[channel, q, k]`` and each gate ``x{n}`` ``[b, pos,
channel]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from ssmlens.kernels import causal_toeplitz
from ssmlens.models.hyena import HyenaMixer
from ssmlens.probes.mixing import MixingResult, register_mixing


@register_mixing(HyenaMixer)
def hyena_mixing(model, layer: int, scope: str, mixer: HyenaMixer, tokens: Tensor) -> MixingResult:
    """``[b, channel, q, k]`` of the mixer at ``scope`` (module docstring)."""
    N = mixer.cfg.order
    names = {h: f"{scope}.hook_{h}" for h in ["v", "out", *(f"x{n}" for n in range(1, N + 1))]}
    _, cache = model.run_with_cache(tokens, names_filter=list(names.values()))
    v = cache[names["v"]].double()
    b, L, d = v.shape
    kernels = mixer.conv_kernels(L)
    parts: dict[str, Tensor] = {}
    M = torch.eye(L, dtype=torch.float64, device=v.device).expand(b, d, L, L)
    for n in range(1, N + 1):
        T = causal_toeplitz(kernels[f"h{n}"].detach().double(), L)  # [d, t, s]
        gate = cache[names[f"x{n}"]].double()  # [b, t, d]
        M = rearrange(gate, "b t d -> b d t 1") * einsum(T, M, "d t r, b d r s -> b d t s")
        parts[f"T{n}"], parts[f"x{n}"] = T, gate
    weight = mixer.out_proj.weight.detach().double()
    bias = mixer.out_proj.bias.detach().double()

    def post(z: Tensor) -> Tensor:  # [b, q, channel, 1] -> [b, q, d_model]
        return F.linear(z[..., 0], weight, bias)

    return MixingResult(matrix=M, values=v[..., None], post=post, output=cache[names["out"]], group="channel",
                        kind="hyena", hook=names["out"], parts=parts)
