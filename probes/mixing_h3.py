"""Token-mixing view of H3's mixer (``ssmlens.models.h3.H3Mixer``): its diagonal SSM's
causal Toeplitz matrix between the gates q and k̃.

Per head h of p channels, with T_h the causal Toeplitz matrix of the head's SSM kernel
(lag 0 including the skip D; ``H3Mixer.conv_kernels``, ``ssmlens.kernels.causal_toeplitz``)
and k̃ = T_shift k the shift SSM's output (its kernel from the same method, applied to
``hook_k``), the mixer computes o_t[j] = Σ_i q_t[i] Σ_{s≤t} T_h[t, s] k̃_s[i] v_s[j], i.e.

    M[h, t, s] = T_h[t, s] · (q_t[h] · k̃_s[h])        values v_s[h]  (``hook_v``)
    out        = out_proj(o)

a linear attention whose scores q·k̃ are weighted by a fixed (input-independent)
convolution kernel: how far back a token can be read is set by T alone, what is read by
the gates. ``parts`` holds the kernel ``[head, q, k]`` and the gates q, k̃
``[b, pos, head, p]``. Groups are channels when ``head_dim`` is 1 (zoology's default),
else heads.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from ssmlens.kernels import causal_toeplitz
from ssmlens.models.h3 import H3Mixer
from ssmlens.probes.mixing import MixingResult, register_mixing


@register_mixing(H3Mixer)
def h3_mixing(model, layer: int, scope: str, mixer: H3Mixer, tokens: Tensor) -> MixingResult:
    """``[b, head, q, k]`` of the mixer at ``scope`` (module docstring)."""
    names = {h: f"{scope}.hook_{h}" for h in ("q", "k", "v", "out")}
    _, cache = model.run_with_cache(tokens, names_filter=list(names.values()))
    q, k, v = (cache[names[h]].double() for h in ("q", "k", "v"))
    L, p = q.shape[1], mixer.head_dim
    kernels = {name: kernel.detach().double() for name, kernel in mixer.conv_kernels(L).items()}
    T_shift = causal_toeplitz(kernels["shift"], L)  # [d, t, s]
    k_shift = einsum(T_shift, k, "d t s, b s d -> b t d")
    # the SSM kernel is one per head, repeated over the head's p² channels (order (h i j))
    T = causal_toeplitz(rearrange(kernels["ssm"], "(h ij) l -> h ij l", ij=p * p)[:, 0], L)  # [h, t, s]
    q_h, k_h = (rearrange(x, "b l (h i) -> b l h i", i=p) for x in (q, k_shift))
    scores = einsum(q_h, k_h, "b t h i, b s h i -> b h t s")
    weight = mixer.out_proj.weight.detach().double()
    bias = mixer.out_proj.bias.detach().double()

    def post(o: Tensor) -> Tensor:  # [b, q, head, p] -> [b, q, d_model]
        return F.linear(rearrange(o, "b q h j -> b q (h j)"), weight, bias)

    return MixingResult(matrix=T[None] * scores, values=rearrange(v, "b l (h j) -> b l h j", j=p), post=post,
                        output=cache[names["out"]], group="channel" if p == 1 else "head", kind="h3",
                        hook=names["out"], parts={"kernel": T, "q": q_h, "k_shift": k_h})
