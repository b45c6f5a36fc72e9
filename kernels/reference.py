"""Float64 sequential reference of the Mamba-1 selective scan (DESIGN §3).

Written to be obviously right, not fast: one Python step per position, in float64,
exactly the recurrence of mamba_ssm's ``selective_scan_ref``:

    Δ = softplus(delta + bias);  Ā_t = exp(Δ_t·A);  h_t = Ā_t ⊙ h_{t-1} + Δ_t·B_t·u_t
    y_t = C_t·h_t + D·u_t;       out = y ⊙ silu(z)

with ``state_override``: at an overridden position t, (Ā_t, Δ_t·B_t·u_t) := (0, value),
so h_t is the given value and later states evolve from it. Differentiable (autograd
through the loop), so it is also the reference for gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor


def expand_groups(bc: Tensor, d: int) -> Tensor:
    """B or C ``[b, L, n]`` or grouped ``[b, L, g, n]`` -> per channel ``[b, L, d, n]``."""
    if bc.ndim == 3:
        return repeat(bc, "b l n -> b l d n", d=d)
    g = bc.shape[2]
    return repeat(bc, "b l g n -> b l (g r) n", r=d // g)


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    initial_state: Tensor | None,
    state_positions: Tensor | None,
    override_positions: Tensor | None,
    override_values: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """All in float64. Returns (out ``[b, L, d]`` before the gate's cast, final state
    ``[b, d, n]``, states ``[b, P, d, n]`` at ``state_positions`` or None)."""
    f64 = torch.float64
    b, L, d = u.shape
    n = A.shape[1]
    u64, A64 = u.to(f64), A.to(f64)
    dt = delta.to(f64)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f64)
    if delta_softplus:
        dt = F.softplus(dt)
    B64 = expand_groups(B.to(f64), d)
    C64 = expand_groups(C.to(f64), d)

    override = {}
    if override_positions is not None:
        for i, p in enumerate(override_positions.tolist()):
            override[p] = override_values[:, i].to(f64)

    h = initial_state.to(f64) if initial_state is not None else u64.new_zeros(b, d, n)
    states, ys = [], []
    for t in range(L):
        if t in override:
            h = override[t]
        else:
            dA = torch.exp(dt[:, t, :, None] * A64)  # b d n
            dBu = (dt[:, t] * u64[:, t])[:, :, None] * B64[:, t]  # b d n
            h = dA * h + dBu
        states.append(h)
        ys.append(torch.einsum("bdn,bdn->bd", h, C64[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u64 * D.to(f64)
    if z is not None:
        y = y * F.silu(z.to(f64))
    out_states = None
    if state_positions is not None:
        all_states = rearrange(torch.stack(states, dim=0), "l b d n -> b l d n")
        out_states = all_states[:, state_positions]
    return y, h, out_states
