"""`torch` backend of the selective scan: chunked and vectorized, fp32 accumulation.

Per chunk of T positions it forms the affine maps (Ā_t, Δ_t·B_t·u_t) time-major,
``[T, b, g, r, n]``, in a few vectorized ops, replaces overridden positions by
(0, value), and steps them with one fused multiply-add per position
(``linear_recurrence.recurrence_time_major``); the chunk's last state carries into
the next chunk. Memory is O(b·T·d·n) whatever L is, and only the requested states
are kept. Gradients come from autograd. The float64 loop in ``reference.py`` is what
it must equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from ssmlens.kernels.linear_recurrence import recurrence_time_major

CHUNK = 64


def _per_channel(bc: Tensor) -> Tensor:
    """B/C chunk ``[b, T, n]`` or ``[b, T, g, n]`` -> time-major broadcastable
    ``[T, b, g|1, 1, n]`` view, avoiding a d-fold copy: channels are laid out as (g r)."""
    if bc.ndim == 3:
        bc = bc[:, :, None, :]
    return rearrange(bc, "b t g n -> t b g 1 n")


def selective_scan_torch(
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
    chunk: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Same signature and returns as ``selective_scan_reference``, computed in fp32.

    Returns (y ``[b, L, d]`` fp32, already gated; final state ``[b, d, n]`` fp32;
    states ``[b, P, d, n]`` fp32 at ``state_positions`` (in that order) or None).
    """
    f32 = torch.float32
    chunk = chunk or CHUNK
    b, L, d = u.shape
    n = A.shape[1]
    g = B.shape[2] if B.ndim == 4 else 1
    r = d // g
    A32 = rearrange(A.to(f32), "(g r) n -> g r n", g=g)

    dt = delta.to(f32)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f32)
    if delta_softplus:
        dt = F.softplus(dt)
    u32 = u.to(f32)

    # Which chunk-local slots are overridden / kept: small index bookkeeping on CPU.
    ov_pos = override_positions.tolist() if override_positions is not None else []
    ov_index = {p: i for i, p in enumerate(ov_pos)}
    want = state_positions.tolist() if state_positions is not None else None

    h = (
        rearrange(initial_state.to(f32), "b (g r) n -> b g r n", g=g)
        if initial_state is not None
        else u32.new_zeros(b, g, r, n)
    )
    ys, kept = [], {}
    for start in range(0, L, chunk):
        stop = min(start + chunk, L)
        dt_c = rearrange(dt[:, start:stop], "b t (g r) -> t b g r", g=g)
        u_c = rearrange(u32[:, start:stop], "b t (g r) -> t b g r", g=g)
        a_c = torch.exp(dt_c[..., None] * A32)  # t b g r n
        b_c = (dt_c * u_c)[..., None] * _per_channel(B[:, start:stop].to(f32))
        local_ov = [p for p in ov_pos if start <= p < stop]
        if local_ov:
            idx = torch.tensor([p - start for p in local_ov], device=u.device)
            vals = override_values[:, [ov_index[p] for p in local_ov]].to(f32)
            vals = rearrange(vals, "b k (g r) n -> k b g r n", g=g)
            mask = torch.zeros(stop - start, dtype=torch.bool, device=u.device)
            mask[idx] = True
            mask = mask[:, None, None, None, None]
            a_c = torch.where(mask, torch.zeros_like(a_c), a_c)
            b_c = torch.where(mask, torch.zeros_like(b_c).index_copy(0, idx, vals), b_c)
        h_c = recurrence_time_major(a_c, b_c, h)  # t b g r n
        C_c = _per_channel(C[:, start:stop].to(f32))
        ys.append(einsum(h_c, C_c, "t b g r n, t b g one n -> b t g r"))
        if want is not None:
            for p in want:
                if start <= p < stop:
                    kept[p] = h_c[p - start]
        h = h_c[-1]

    y = rearrange(torch.cat(ys, dim=1), "b t g r -> b t (g r)")
    if D is not None:
        y = y + u32 * D.to(f32)
    if z is not None:
        y = y * F.silu(z.to(f32))
    final = rearrange(h, "b g r n -> b (g r) n")
    states = None
    if want == []:  # no positions asked for: an empty [b, 0, d, n], as the other backends give
        states = h.new_zeros(b, 0, d, n)
    elif want is not None:
        states = rearrange(torch.stack([kept[p] for p in want], dim=1), "b p g r n -> b p (g r) n")
    return y, final, states
