"""Selective scans over the short windows of resumed forwards (``ssmlens.models.resume``).

Mamba-1 semantics as ``ssmlens.kernels.selective_scan``'s ``torch`` backend (the same fused
multiply-add per step, fp32), specialised to what a resumed window needs: Δ already
softplus'ed, no gate, an initial state, and either every state of the window kept
(``scan_window``: written in place, read out by one vector dot, no per-chunk stack
or batched matmul) or only the final state and a few read positions
(``scan_read_out``: a last block's queries). Ā = exp2(Δ·A·log2 e): exp2 ran 3×
faster than exp on this CPU, within an ulp or two of it. ``tests/test_resume.py``
holds resumed forwards built on these to the full forward (``kernels``' scan).
"""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor


def read_state(h: Float[Tensor, "*batch d_inner d_state"], C: Float[Tensor, "*batch d_state"]
                ) -> Float[Tensor, "*batch d_inner"]:
    """C·h over d_state (einsum "... d n, ... n -> ... d"): as a vector dot, twice as
    fast here as einsum's batched matmul with one output column."""
    return torch.linalg.vecdot(h, rearrange(C, "... n -> ... 1 n"))


def scan_read_out(
    u: Float[Tensor, "row t d_inner"],
    delta: Float[Tensor, "row t d_inner"],
    A_log2: Float[Tensor, "d_inner d_state"],
    B: Float[Tensor, "row t d_state"],
    C: Float[Tensor, "row t d_state"],
    D: Float[Tensor, " d_inner"],
    h0: Float[Tensor, "row d_inner d_state"],
    read: Int[Tensor, "row q"],
) -> tuple[Float[Tensor, "row d_inner d_state"], Float[Tensor, "row q d_inner"]]:
    """The selective scan (Δ already softplus'ed, no gate; A given as A·log2(e): Ā =
    exp2(Δ·A_log2)) from h0, reading y = C·h + D·u out only at the time steps ``read``
    of each row: (final state, y at the reads), fp32.

    The same fused multiply-add per step as the ``torch`` backend, without keeping
    every state or reading every step out: what a resumed forward's last block needs
    (its output at the queries only)."""
    a, b = _steps(u, delta, A_log2, B)
    C_t = _time_major(C, "r t n -> t r n")
    steps = sorted(set(read.flatten().tolist()))
    h, ys = h0.float(), []
    for t in range(a.shape[0]):
        h = torch.addcmul(b[t], a[t], h)
        if t in steps:
            ys.append(read_state(h, C_t[t]))  # r d
    y = torch.stack(ys)  # k r d
    slot = torch.searchsorted(torch.tensor(steps, device=read.device), read)  # r q
    rows = torch.arange(read.shape[0], device=read.device)[:, None]
    u_read = u.float()[rows, read]
    return h, y[slot, rows] + u_read * D.float()


def scan_window(
    u: Float[Tensor, "row t d_inner"],
    delta: Float[Tensor, "row t d_inner"],
    A_log2: Float[Tensor, "d_inner d_state"],
    B: Float[Tensor, "row t d_state"],
    C: Float[Tensor, "row t d_state"],
    D: Float[Tensor, " d_inner"],
    h0: Float[Tensor, "row d_inner d_state"] | None,
) -> tuple[Float[Tensor, "row t d_inner"], Float[Tensor, "row t d_inner d_state"]]:
    """The selective scan over a window (Δ already softplus'ed, no gate) from h0 (None:
    zeros): (y = C·h + D·u ``[R, t, d_inner]``, every state ``[R, t, d_inner, d_state]``
    as a time-major view), fp32. Not differentiable (states written in place)."""
    a, b = _steps(u, delta, A_log2, B)
    states = torch.empty_like(a)  # t r d n
    h = torch.zeros_like(a[0]) if h0 is None else h0.float()
    for t in range(a.shape[0]):
        h = torch.addcmul(b[t], a[t], h, out=states[t])
    y = read_state(states, _time_major(C, "r t n -> t r n"))  # t r d
    return rearrange(y, "t r d -> r t d") + u.float() * D.float(), rearrange(states, "t r d n -> r t d n")


def _time_major(x: Tensor, pattern: str) -> Tensor:
    # contiguous before broadcasting: a permuted operand makes the products several times slower
    return rearrange(x.float(), pattern).contiguous()


def _steps(u: Tensor, delta: Tensor, A_log2: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Time-major ``[t, R, d_inner, d_state]`` maps h -> Ā_t·h + Δ_t·B_t·u_t: (Ā, Δ·B·u)."""
    dt = _time_major(delta, "r t d -> t r d 1")
    a = (dt * A_log2.float()).exp2_()
    b = (dt * _time_major(u, "r t d -> t r d 1")) * _time_major(B, "r t n -> t r 1 n")
    return a, b
