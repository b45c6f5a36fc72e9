"""Token-mixing view of Based's mixer (``ssmlens.models.based.BasedMixer``): its Taylor
linear attention and its sliding-window softmax attention, side by side.

Per head h, from the hooked values of one forward (float64):

    linear   M[t, s] = φ(q_t)·φ(k_s) / (n_t + ε)  for s ≤ t     values v   (``hook_v``)
    window   P[t, s] = softmax_{t−w<s≤t}(q'_t·k'_s / √e)        values v'  (``hook_window_v``)
    out      = W_o [y ; w],   y_t = Σ_s M[t, s] v_s,  w_t = Σ_s P[t, s] v'_s

φ(q), φ(k) are ``hook_phi_q``/``hook_phi_k``, n_t the normalizer ``hook_normalizer``
(φ(q_t)·Σ_{s≤t} φ(k_s): each linear row sums to n_t / (n_t + ε) ≈ 1), q', k' the window's
``hook_window_q``/``hook_window_k``. The result has 2·heads groups: the linear heads
("linear.h0", …), then the window heads ("window.h0", …; none when ``window`` = 0), each
with its own values; ``post`` puts y and w back in the order the output projection reads
them. The linear part keeps every earlier token (no decay): how much of it lands on a
given token is decided by the feature map alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from ssmlens.models.based import BasedMixer
from ssmlens.models.based_attention import window_scores
from ssmlens.probes.mixing import MixingResult, register_mixing


@register_mixing(BasedMixer)
def based_mixing(model, layer: int, scope: str, mixer: BasedMixer, tokens: Tensor) -> MixingResult:
    """``[b, 2·head, q, k]`` (linear heads, then window heads) of the mixer at ``scope``."""
    window = int(mixer.cfg.window)
    hooks = ["phi_q", "phi_k", "normalizer", "v", "out"] + (["window_q", "window_k", "window_v"] if window else [])
    names = {h: f"{scope}.hook_{h}" for h in hooks}
    _, cache = model.run_with_cache(tokens, names_filter=list(names.values()))
    phi_q, phi_k, n, v = (cache[names[h]].double() for h in ("phi_q", "phi_k", "normalizer", "v"))
    L = phi_q.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=phi_q.device).tril()
    linear = einsum(phi_q, phi_k, "b q h f, b k h f -> b h q k").masked_fill(~causal, 0.0)
    linear = linear / (rearrange(n, "b q h -> b h q 1") + mixer.cfg.eps)
    matrices, values = [linear], [v]
    H = mixer.n_heads
    labels = [f"linear.h{i}" for i in range(H)]
    if window:
        wq, wk, wv = (cache[names[h]].double() for h in ("window_q", "window_k", "window_v"))
        matrices.append(window_scores(wq, wk, window).softmax(-1))
        values.append(wv)
        labels += [f"window.h{i}" for i in range(H)]
    weight = mixer.out_proj.weight.detach().double()

    def post(mixed: Tensor) -> Tensor:  # [b, q, (part h), e] -> W_o [y ; w] per head, as the mixer concatenates
        parts = rearrange(mixed, "b q (part h) e -> b q h (part e)", h=H)
        return F.linear(rearrange(parts, "b q h pe -> b q (h pe)"), weight)

    return MixingResult(matrix=torch.cat(matrices, dim=1), values=torch.cat(values, dim=2), post=post,
                        output=cache[names["out"]], group="head", kind="based", hook=names["out"],
                        group_labels=labels)
