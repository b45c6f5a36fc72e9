"""Based's two attentions as functions: Taylor linear attention and sliding-window
softmax attention, each with a float64 sequential reference beside it.

Linear attention (Arora et al. 2024; zoology's ``TaylorExp`` feature map): for q, k
``[b, L, head, f]`` (f = feature_dim) and v ``[b, L, head, e]``,

    φ(x) = [1, x / f^{1/4}, vec(x xᵀ) / (√2·√f)]  ∈ R^{1 + f + f²}
    φ(q)·φ(k) = 1 + q·k/√f + (q·k)² / (2f)       (2nd-order Taylor of exp(q·k/√f), ≥ 1/2)
    S_t = Σ_{s≤t} φ(k_s) v_sᵀ                       the kv-state  [head, 1+f+f², e]
    n_t = φ(q_t) · Σ_{s≤t} φ(k_s)                   the normalizer
    y_t = φ(q_t)ᵀ S_t / (n_t + ε)

``linear_attention_parallel`` computes the numerator φ(q_t)ᵀS_t and n_t in the
quadratic ("parallel") form A = causal(φ(q) φ(k)ᵀ): numerator = A v, n = A·1, with no
state materialized; ``kv_states`` / ``read_states`` are the state form (what
``hook_kv_state`` shows); ``linear_attention_reference`` is the recurrence itself, one
position at a time in float64, with optional state overrides (S_t replaced, later
states evolving from it), which is what an edit of ``hook_kv_state`` must do.

Sliding-window attention: query t sees keys t − w < r ≤ t (w = ``window``, itself
included), softmax(q·k/√e) over them. ``window_attention`` gathers each query's w keys
(O(L·w), no L × L pattern); ``window_scores`` gives the full masked ``[b, h, q, k]``
scores when the pattern is hooked; ``window_attention_reference`` loops over queries.

Non-finite values propagate as in the references: the parallel form multiplies masked
(zero) weights with every value, so inputs with a NaN or inf take the state form
(a cumulative sum, causal); the window gathers only keys inside it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Bool, Float
from torch import Tensor


def feature_size(feature_dim: int) -> int:
    """Length of φ(x) for x ∈ R^f: 1 + f + f²."""
    return 1 + feature_dim + feature_dim * feature_dim


def taylor_features(x: Float[Tensor, "... f"]) -> Float[Tensor, "... phi"]:
    """φ(x) = [1, x / f^{1/4}, vec(x xᵀ) / (√2·√f)] along the last axis (module docstring)."""
    f = x.shape[-1]
    second = rearrange(einsum(x, x, "... i, ... j -> ... i j"), "... i j -> ... (i j)")
    return torch.cat([torch.ones_like(x[..., :1]), x / f**0.25, second / (math.sqrt(2) * math.sqrt(f))], dim=-1)


def linear_attention_parallel(phi_q: Float[Tensor, "b L h phi"], phi_k: Float[Tensor, "b L h phi"],
                              v: Float[Tensor, "b L h e"]) -> tuple[Tensor, Tensor]:
    """(numerator φ(q_t)ᵀS_t ``[b, L, h, e]``, normalizer n_t ``[b, L, h]``) in the
    quadratic form A = causal(φ(q)φ(k)ᵀ): A v and A·1. O(L²) per head, no state."""
    L = phi_q.shape[1]
    if not bool(torch.isfinite(phi_k).all() & torch.isfinite(v).all()):
        z = phi_k.cumsum(dim=1)
        return read_states(phi_q, kv_states(phi_k, v)), einsum(phi_q, z, "b l h f, b l h f -> b l h")
    A = einsum(phi_q, phi_k, "b q h f, b k h f -> b h q k")
    causal = torch.ones(L, L, dtype=torch.bool, device=A.device).tril()
    A = A.masked_fill(~causal, 0.0)
    numerator = einsum(A, v, "b h q k, b k h e -> b q h e")
    return numerator, rearrange(A.sum(-1), "b h q -> b q h")


def kv_states(phi_k: Float[Tensor, "b L h phi"], v: Float[Tensor, "b L h e"]) -> Float[Tensor, "b L h phi e"]:
    """S_t = Σ_{s≤t} φ(k_s) v_sᵀ at every position."""
    return einsum(phi_k, v, "b l h f, b l h e -> b l h f e").cumsum(dim=1)


def read_states(phi_q: Float[Tensor, "b L h phi"], S: Float[Tensor, "b L h phi e"]) -> Float[Tensor, "b L h e"]:
    """φ(q_t)ᵀ S_t (the numerator of y_t)."""
    return einsum(phi_q, S, "b l h f, b l h f e -> b l h e")


def linear_attention_reference(phi_q: Tensor, phi_k: Tensor, v: Tensor, eps: float,
                               state_override: dict[int, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The recurrence S_t = S_{t−1} + φ(k_t)v_tᵀ, z_t = z_{t−1} + φ(k_t), n_t = φ(q_t)·z_t,
    y_t = φ(q_t)ᵀS_t / (n_t + ε), one position at a time in float64.

    ``state_override``: {t: S ``[b, h, phi, e]``}: S_t is replaced by the value before it
    is read, and later states evolve from it (the normalizer is not touched).
    Returns (y ``[b, L, h, e]``, n ``[b, L, h]``, S ``[b, L, h, phi, e]``)."""
    phi_q, phi_k, v = phi_q.double(), phi_k.double(), v.double()
    b, L, h, F = phi_k.shape
    S = torch.zeros(b, h, F, v.shape[-1], dtype=torch.float64, device=v.device)
    z = torch.zeros(b, h, F, dtype=torch.float64, device=v.device)
    ys, ns, Ss = [], [], []
    for t in range(L):
        S = S + einsum(phi_k[:, t], v[:, t], "b h f, b h e -> b h f e")
        if state_override and t in state_override:
            S = state_override[t].double().clone()
        z = z + phi_k[:, t]
        n = einsum(phi_q[:, t], z, "b h f, b h f -> b h")
        ys.append(einsum(phi_q[:, t], S, "b h f, b h f e -> b h e") / (n[..., None] + eps))
        ns.append(n)
        Ss.append(S)
    return torch.stack(ys, 1), torch.stack(ns, 1), torch.stack(Ss, 1)


def window_visible(L: int, window: int, device=None) -> Bool[Tensor, "q k"]:
    """visible[t, r] = t − window < r ≤ t."""
    t = torch.arange(L, device=device)
    lag = t[:, None] - t[None, :]
    return (lag >= 0) & (lag < window)


def window_attention(q: Float[Tensor, "b L h e"], k: Float[Tensor, "b L h e"], v: Float[Tensor, "b L h e"],
                     window: int) -> Float[Tensor, "b L h e"]:
    """Sliding-window softmax attention from each query's ``window`` keys (gathered
    with ``unfold``: keys before position 0 are masked), without the L × L pattern."""
    L = q.shape[1]
    pad = lambda x: F.pad(x, (0, 0, 0, 0, window - 1, 0)).unfold(1, window, 1)  # noqa: E731  b L h e w
    k_win, v_win = pad(k), pad(v)
    scores = einsum(q, k_win, "b l h e, b l h e w -> b h l w") / math.sqrt(q.shape[-1])
    key_pos = torch.arange(L, device=q.device)[:, None] - (window - 1) + torch.arange(window, device=q.device)
    scores = scores.masked_fill(key_pos < 0, float("-inf"))
    return einsum(scores.softmax(dim=-1), v_win, "b h l w, b l h e w -> b l h e")


def window_scores(q: Float[Tensor, "b L h e"], k: Float[Tensor, "b L h e"], window: int) -> Float[Tensor, "b h q k"]:
    """Scaled scores q·k/√e with keys outside each query's window at −inf."""
    scores = einsum(q, k, "b q h e, b k h e -> b h q k") / math.sqrt(q.shape[-1])
    return scores.masked_fill(~window_visible(q.shape[1], window, q.device), float("-inf"))


def window_attention_reference(q: Tensor, k: Tensor, v: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Sliding-window attention one query at a time in float64: (out ``[b, L, h, e]``,
    pattern ``[b, h, q, k]``, zero outside the window)."""
    q, k, v = q.double(), k.double(), v.double()
    b, L, h, e = q.shape
    out = torch.zeros_like(v)
    pattern = torch.zeros(b, h, L, L, dtype=torch.float64, device=q.device)
    for t in range(L):
        lo = max(0, t - window + 1)
        s = einsum(q[:, t], k[:, lo : t + 1], "b h e, b r h e -> b h r") / math.sqrt(e)
        p = s.softmax(-1)
        pattern[:, :, t, lo : t + 1] = p
        out[:, t] = einsum(p, v[:, lo : t + 1], "b h r, b r h e -> b h e")
    return out, pattern
