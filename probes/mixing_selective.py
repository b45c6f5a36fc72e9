"""The selective scan as a token-mixing matrix: Mamba's implicit ("hidden") attention.

The scan h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t, y_t = C_t · h_t + D u_t unrolls, per
channel d, into y_t = Σ_{s≤t} α[t, s] u_s + D u_t with (Ali et al., 2024)

    α[d, t, s] = Σ_n C[t, n] · exp(Σ_{r=s+1..t} Δ[r, d] A[d, n]) · Δ[s, d] B[s, n],   s ≤ t.

``selective_mixing`` computes α for a batch ``[b, d, q, k]`` exactly in float64 with a
batched matmul per block of queries: with S_t = Σ_{r≤t} Δ_r A (the cumulative log
decay), α[t, s] = Σ_n (C_t e^{S_t − S_0}) (Δ_s B_s e^{S_0 − S_s}) for a reference
query t_0 of the block. A block ends before the decay inside it exceeds e^{−600} for
any channel and state, so neither factor overflows and no decay is clipped.
``selective_mixing_reference`` is the term-by-term loop (tests).

``implicit_attention`` is the same matrix for one example reduced over channels
(mean |α| or mean α, ``[q, k]``): what the dashboard draws from stored Δ, A, B, C,
block by block so that ``[d, q, k]`` never exists at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

# A block of queries ends before Σ |log decay| inside it passes this (e^600 fits in float64).
LOG_DECAY_SPAN = 600.0
MAX_BLOCK = 64  # queries per block at most (bounds the [b, block, d, n] factors)


def _blocks(S: Tensor) -> list[tuple[int, int]]:
    """Query blocks [t0, t1) over which S ``[b, L, d, n]`` (non-increasing in t) falls
    by at most LOG_DECAY_SPAN, and which hold at most MAX_BLOCK queries."""
    L = S.shape[1]
    out, t0 = [], 0
    for t in range(1, L + 1):
        if t == L or t - t0 >= MAX_BLOCK or float((S[:, t0] - S[:, t]).max()) > LOG_DECAY_SPAN:
            out.append((t0, t))
            t0 = t
    return out


def _mixing_blocks(delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   reduce: Callable[[Tensor], Tensor]) -> list[tuple[int, int, Tensor]]:
    """``(t0, t1, reduce(α[:, :, t0:t1, :t1]))`` per query block; inputs float64,
    delta ``[b, L, d]``, A ``[d, n]``, B/C ``[b, L, n]``."""
    log_decay = delta[..., None] * A  # [b, L, d, n], ≤ 0
    S = log_decay.cumsum(1)
    inp = delta[..., None] * B[:, :, None, :]  # Δ_s B_s [b, L, d, n]
    out = []
    for t0, t1 in _blocks(S):
        ref = S[:, t0:t0 + 1]  # [b, 1, d, n]
        q = C[:, t0:t1, None, :] * torch.exp(S[:, t0:t1] - ref)  # [b, bt, d, n], exponents ≤ 0
        # keys after t0 get exponents ≤ LOG_DECAY_SPAN (by the block's choice); keys past the
        # query are masked below, and those after t1 are never formed
        k = inp[:, :t1] * torch.exp(ref - S[:, :t1])  # [b, t1, d, n]
        alpha = torch.einsum("btdn,bsdn->bdts", q, k)  # [b, d, bt, t1]
        causal = torch.arange(t1, device=delta.device)[None, :] <= torch.arange(t0, t1, device=delta.device)[:, None]
        out.append((t0, t1, reduce(torch.where(causal, alpha, torch.zeros((), dtype=alpha.dtype)))))
    return out


def selective_mixing(
    delta: Float[Tensor, "batch pos d_inner"], A: Float[Tensor, "d_inner d_state"],
    B: Float[Tensor, "batch pos d_state"], C: Float[Tensor, "batch pos d_state"],
) -> Float[Tensor, "batch d_inner q k"]:
    """α ``[b, d_inner, q, k]`` (float64; 0 above the diagonal) of the selective scan with
    step sizes ``delta`` (after softplus), A (negative), and input-dependent B, C."""
    delta, A, B, C = (x.detach().double() for x in (delta, A, B, C))
    b, L, d = delta.shape
    alpha = torch.zeros(b, d, L, L, dtype=torch.float64, device=delta.device)
    for t0, t1, part in _mixing_blocks(delta, A, B, C, lambda a: a):
        alpha[:, :, t0:t1, :t1] = part
    return alpha


def selective_mixing_reference(delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Loop version of ``selective_mixing``: the product of decays, term by term."""
    delta, A, B, C = (x.detach().double() for x in (delta, A, B, C))
    b, L, d = delta.shape
    alpha = torch.zeros(b, d, L, L, dtype=torch.float64)
    for t in range(L):
        for s in range(t + 1):
            decay = torch.exp((delta[:, s + 1:t + 1, :, None] * A).sum(1))  # [b, d, n]
            alpha[:, :, t, s] = (C[:, t, None, :] * decay * delta[:, s, :, None] * B[:, s, None, :]).sum(-1)
    return alpha


def _reducer(reduce: str) -> Callable[[Tensor], Tensor]:
    if reduce == "abs_mean":
        return lambda a: a.abs().mean(1)
    if reduce == "mean":
        return lambda a: a.mean(1)
    raise ValueError(f"reduce must be 'abs_mean' or 'mean', got {reduce!r}")


def implicit_attention(delta: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray,
                       reduce: str = "abs_mean") -> np.ndarray:
    """Mamba's implicit attention ``[query t, key s]`` of one example, reduced over channels.

    ``delta [L, D]``, ``A [D, N]``, ``B``/``C [L, N]`` (numpy; e.g. read from a run store).
    ``reduce``: "abs_mean" (mean over channels of |α|: signs differ across channels, so a
    channel-agnostic picture needs magnitudes) or "mean". The upper triangle is 0.
    """
    fn = _reducer(reduce)
    # float64 copies: a reader's arrays are read-only and shared
    d, a, bb, c = (torch.from_numpy(np.array(v, dtype=np.float64)) for v in (delta, A, B, C))
    L = d.shape[0]
    out = torch.zeros(L, L, dtype=torch.float64)
    for t0, t1, part in _mixing_blocks(d[None], a, bb[None], c[None], fn):
        out[t0:t1, :t1] = part[0]
    return out.numpy()


def implicit_attention_reference(delta, A, B, C, reduce: str = "abs_mean") -> np.ndarray:
    """Loop version of ``implicit_attention`` (tests)."""
    def t(v):
        return torch.from_numpy(np.asarray(v, dtype=np.float64))

    alpha = selective_mixing_reference(t(delta)[None], t(A), t(B)[None], t(C)[None])
    return _reducer(reduce)(alpha)[0].numpy()
