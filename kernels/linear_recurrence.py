"""Chunked, vectorized first-order linear recurrence h_t = a_t ⊙ h_{t-1} + b_t.

The `torch` scan backend and the state-edit propagation of the Mamba mixer both
reduce to this. Inside a chunk of T positions it runs a Hillis–Steele scan
(log2 T vectorized steps, only multiplications by a and additions, so it is as
stable as the sequential loop); chunks are chained sequentially through their last
state, so memory stays O(chunk) per step. Differentiable through plain autograd.

``linear_recurrence_reference`` beside it is the sequential loop it must equal.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _hillis_steele(a: Tensor, b: Tensor) -> Tensor:
    """Inclusive scan over dim 1 of the affine maps x -> a·x + b; returns the b part
    (the states when the carry-in is already folded into b[:, 0]). a, b: [batch, T, ...]."""
    T = a.shape[1]
    offset = 1
    while offset < T:
        # Compose map t with map t - offset: (a_t, b_t)∘(a_s, b_s) = (a_t a_s, a_t b_s + b_t).
        b = torch.cat([b[:, :offset], a[:, offset:] * b[:, :-offset] + b[:, offset:]], dim=1)
        a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    return b


def linear_recurrence(
    a: Tensor, b: Tensor, h0: Tensor | None = None, chunk: int = 64
) -> Tensor:
    """All states of h_t = a_t ⊙ h_{t-1} + b_t.

    a, b: ``[batch, L, *state]`` (same shape); h0: ``[batch, *state]`` or None (zeros).
    Returns ``[batch, L, *state]`` in the dtype of b.
    """
    if a.shape != b.shape:
        raise ValueError(f"linear_recurrence: a {tuple(a.shape)} and b {tuple(b.shape)} differ")
    L = a.shape[1]
    out = []
    carry = h0
    for start in range(0, L, chunk):
        a_c, b_c = a[:, start : start + chunk], b[:, start : start + chunk]
        if carry is not None:
            b_c = torch.cat([b_c[:, :1] + a_c[:, :1] * carry[:, None], b_c[:, 1:]], dim=1)
        h_c = _hillis_steele(a_c, b_c)
        out.append(h_c)
        carry = h_c[:, -1]
    return torch.cat(out, dim=1)


def linear_recurrence_reference(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Sequential float64 loop that ``linear_recurrence`` must equal."""
    a64, b64 = a.double(), b.double()
    h = h0.double() if h0 is not None else torch.zeros_like(b64[:, 0])
    states = []
    for t in range(a.shape[1]):
        h = a64[:, t] * h + b64[:, t]
        states.append(h)
    return torch.stack(states, dim=1)
