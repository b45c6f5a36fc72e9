"""First-order linear recurrence h_t = a_t ⊙ h_{t-1} + b_t, the core of the `torch`
scan backend and of the Mamba mixer's state-edit propagation.

The work is laid out time-major and stepped with one fused multiply-add
(``torch.addcmul``) per position over the whole ``[batch, *state]`` slab. On the
CPU this moves each element of a and b once; a log-depth Hillis–Steele scan was
4–20× slower here because it rewrites the whole chunk log2(T) times (measured on
shapes [1344, 21, 128, 16] and [32, 256, 128, 16]). Differentiable through autograd.

``linear_recurrence_reference`` beside it is the float64 loop it must equal.
"""

from __future__ import annotations

import torch
from torch import Tensor


def recurrence_time_major(a: Tensor, b: Tensor, h: Tensor | None) -> Tensor:
    """States of h_t = a_t·h_{t-1} + b_t for time-major a, b ``[T, batch, *state]``,
    starting from h ``[batch, *state]`` (None = zeros). Returns ``[T, batch, *state]``."""
    states = []
    for t in range(a.shape[0]):
        h = b[t] if h is None else torch.addcmul(b[t], a[t], h)
        states.append(h)
    return torch.stack(states, dim=0)


def linear_recurrence(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """All states of h_t = a_t ⊙ h_{t-1} + b_t.

    a, b: ``[batch, L, *state]`` (same shape); h0: ``[batch, *state]`` or None (zeros).
    Returns ``[batch, L, *state]``.
    """
    if a.shape != b.shape:
        raise ValueError(f"linear_recurrence: a {tuple(a.shape)} and b {tuple(b.shape)} differ")
    states = recurrence_time_major(a.transpose(0, 1).contiguous(), b.transpose(0, 1).contiguous(), h0)
    return states.transpose(0, 1)


def linear_recurrence_reference(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Sequential float64 loop that ``linear_recurrence`` must equal."""
    a64, b64 = a.double(), b.double()
    h = h0.double() if h0 is not None else torch.zeros_like(b64[:, 0])
    states = []
    for t in range(a.shape[1]):
        h = a64[:, t] * h + b64[:, t]
        states.append(h)
    return torch.stack(states, dim=1)
