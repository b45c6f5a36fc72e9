"""Forward kernel of the Mamba-1 selective scan (DESIGN §3): the recurrence and its launch.

Layout: one thread owns one channel's whole state h ``[n]`` in registers; a program
owns ``BD = 32·num_warps`` channels of one group of one sequence, and walks its
positions in chunks of ``T``. The per-position inputs come as ``[T, 1, BD]`` tiles
(coalesced), loaded one chunk ahead as loop-carried values (software pipelining: the
compiler sank loads made in the chunk itself next to their use, and each step waited
on device memory), the channel-wide terms (softplus, Δ·u, the gate) are computed once
per element, and the recurrence then steps through the chunk in registers
(``tl.static_range``: picking row k of a tile whose T axis lives inside the thread is
a register move). y_t = C_t·h_t is a reduction inside the thread, so the loop has no
shuffles and no barriers. B and C are fp32 (converted once per call) and every thread
reads whole rows of them.

EVEN calls (n a power of two ≥ 4, L a multiple of T, channels a multiple of BD) run
without masks, and move every state-shaped tensor (states, checkpoints, override
values, initial and final state, segment maps) as 16-byte vectors in the recurrence's
own layout (``triton_state_io.py``).

Long sequences with few channels are cut into ``n_seg`` segments scanned in
parallel: ``_fwd_summary_kernel`` (``triton_fwd_summary.py``) gives each segment's map
h_end = P ⊙ h_start + S (P = exp(A·ΣΔ), or 0 if an override sits in the segment), and
``_fwd_kernel`` folds the earlier segments' maps into its starting state.

Options, all as compile-time flags: Δ bias and softplus, D skip, silu(z) gate,
initial state, states written only at positions with ``sidx[t] >= 0`` (slot
``sidx[t]`` of ``states``), overrides ``(a_t, b_t) := (0, values[ovidx[t]])``, and
checkpoints of h every ``CK`` positions for the backward pass (``triton_bwd.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmlens.kernels.triton_common import _SIZES, LOG2E, _dt_of, _flags, _load_idx, _load_tile
from ssmlens.kernels.triton_fwd_summary import _fwd_summary_kernel
from ssmlens.kernels.triton_state_io import _load_row, _load_state, _store_state


@triton.jit
def _fold_maps(h, P_ptr, S_ptr, base, first, step, count, dn, off_dn, one, m_dn, VEC: tl.constexpr):
    """h after the segment maps h <- P_j ⊙ h + S_j, j = first, first + step, ... (count of
    them, rows ``base + j`` of P and S), in that order. Four maps are loaded before
    their four updates: the chain waits on memory once per four segments, not once
    per segment (with 64 segments the last one waited 63 times)."""
    for i0 in range(0, count, 4):
        j = first + i0 * step
        ok1 = (one + i0 + 1) < count
        ok2 = (one + i0 + 2) < count
        ok3 = (one + i0 + 3) < count
        P0 = _load_state(P_ptr, (base + j) * dn, off_dn, one == 0, m_dn, VEC)
        S0 = _load_state(S_ptr, (base + j) * dn, off_dn, one == 0, m_dn, VEC)
        P1 = _load_state(P_ptr, (base + j + step) * dn, off_dn, ok1, m_dn, VEC)
        S1 = _load_state(S_ptr, (base + j + step) * dn, off_dn, ok1, m_dn, VEC)
        P2 = _load_state(P_ptr, (base + j + 2 * step) * dn, off_dn, ok2, m_dn, VEC)
        S2 = _load_state(S_ptr, (base + j + 2 * step) * dn, off_dn, ok2, m_dn, VEC)
        P3 = _load_state(P_ptr, (base + j + 3 * step) * dn, off_dn, ok3, m_dn, VEC)
        S3 = _load_state(S_ptr, (base + j + 3 * step) * dn, off_dn, ok3, m_dn, VEC)
        h = P0 * h + S0
        h = tl.where(ok1, P1 * h + S1, h)
        h = tl.where(ok2, P2 * h + S2, h)
        h = tl.where(ok3, P3 * h + S3, h)
    return h


# In the step loops, row k of a [T, ...] tile is read as tl.sum(tl.where(tt3 == k, x, 0), 0):
# the T axis lives inside the thread, so once unrolled this is a register pick. Scalars
# that enter masks are first made [1, 1] tensors (`one + t`): Triton's interpreter
# mishandles scalar & tensor masks. Both idioms are written inline, not as helper
# functions, because every nested jit call costs the interpreter a re-patch of tl.


@triton.jit
def _fwd_steps(h, dt, dtu, oi, si, t0, tt3, one, bc_base, nn, nmask, A2, B_ptr, C_ptr, ov_ptr, st_ptr,
               ck_ptr, pid_b, dn, off_dn, m_dn, L, g, n, seg_end, n_ov, n_st, n_ck,
               T: tl.constexpr, CK: tl.constexpr, HAS_OV: tl.constexpr, ST: tl.constexpr,
               EVEN: tl.constexpr, VEC: tl.constexpr):
    """The recurrence through one chunk of T positions from t0 (unrolled): returns h
    after it and the chunk's y tile ``[T, 1, BD]`` (before D and the gate). ST: write
    the requested states (``si``, the chunk's slots, -1 = none)."""
    ytile = tl.zeros_like(dt)
    for k in tl.static_range(T):
        sel = tt3 == k
        t = t0 + k
        if EVEN:
            Bk = _load_row(B_ptr, bc_base + t * (g * n), nn, VEC)  # [NP, 1]
            Ck = _load_row(C_ptr, bc_base + t * (g * n), nn, VEC)
        else:
            # Rows past the end are clamped, not masked: there Δ = 0 and h stays put.
            bc_off = bc_base + tl.minimum(t, L - 1) * (g * n) + nn[:, None]
            Bk = tl.load(B_ptr + bc_off, mask=nmask[:, None], other=0.0)
            Ck = tl.load(C_ptr + bc_off, mask=nmask[:, None], other=0.0)
        dtk = tl.sum(tl.where(sel, dt, 0.0), axis=0)  # [1, BD]
        dtuk = tl.sum(tl.where(sel, dtu, 0.0), axis=0)
        h = tl.exp2(dtk * A2) * h + dtuk * Bk
        if HAS_OV:
            ok = tl.sum(tl.where(sel, oi, 0), axis=0)  # [1, 1]
            v = _load_state(ov_ptr, (pid_b * n_ov + tl.maximum(ok, 0)) * dn, off_dn, ok >= 0, m_dn, VEC)
            h = tl.where(ok >= 0, v, h)
        if ST:
            sk = tl.sum(tl.where(sel, si, 0), axis=0)  # [1, 1]
            _store_state(st_ptr, (pid_b * n_st + tl.maximum(sk, 0)) * dn, off_dn, h, sk >= 0, m_dn, VEC)
        if CK > 0:
            if (k + 1) % CK == 0:
                _store_state(ck_ptr, (pid_b * n_ck + (t + 1) // CK - 1) * dn, off_dn, h, (one + t) < seg_end,
                             m_dn, VEC)
        yk = tl.sum(h * Ck, axis=0, keep_dims=True)  # [1, BD]: inside the thread
        ytile = tl.where(sel, yk[None, :, :], ytile)
    return h, ytile


@triton.jit(do_not_specialize=_SIZES)
def _fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    ov_ptr, ovidx_ptr, sidx_ptr, sumP_ptr, sumS_ptr,
    y_ptr, hT_ptr, st_ptr, ck_ptr,
    L, d, n, g, r, seg_len, n_seg, n_st, n_ov, n_ck,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, CK: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_ST: tl.constexpr, HAS_OV: tl.constexpr,
    EVEN: tl.constexpr, VEC: tl.constexpr,
):
    """Grid (g·blocks, b, n_seg). Writes y ``[b, L, d]``, the final state (last
    segment), requested states and, if CK > 0, h at every position t with
    (t + 1) % CK == 0 into ``ck[b, (t + 1) // CK - 1]``. B and C are fp32 ``[b, L, g, n]``.
    EVEN: n == NP, L a multiple of T and r of BD, so no masks and no clamps."""
    pid0 = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    nblk = tl.cdiv(r, BD)
    grp = pid0 // nblk
    c_loc = (pid0 % nblk) * BD + tl.arange(0, BD)
    cmask = c_loc < r
    ch = grp * r + c_loc
    nn = tl.arange(0, NP)
    nmask = nn < n
    tt3 = tl.arange(0, T)[:, None, None]
    one = tl.zeros([1, 1], dtype=tl.int32)
    dn = d * n

    off_dn = ch[None, :] * n + nn[:, None]  # [NP, BD]
    m_dn = cmask[None, :] & nmask[:, None]
    A2 = _load_state(A_ptr, 0, off_dn, one == 0, m_dn, VEC) * LOG2E
    bias = tl.load(bias_ptr + ch, mask=cmask, other=0.0).to(tl.float32)[None, None, :] if HAS_BIAS else 0.0
    Dv = tl.load(D_ptr + ch, mask=cmask, other=0.0).to(tl.float32)[None, None, :] if HAS_D else 0.0

    if HAS_H0:
        h = _load_state(h0_ptr, pid_b * dn, off_dn, one == 0, m_dn, VEC)
    else:
        h = tl.zeros([NP, BD], dtype=tl.float32)
    # The maps of the earlier segments (summary pass) bring h to this segment's start.
    h = _fold_maps(h, sumP_ptr, sumS_ptr, pid_b * n_seg, 0, 1, pid_s, dn, off_dn, one, m_dn, VEC)

    seg_start = pid_s * seg_len
    seg_end = tl.minimum(seg_start + seg_len, L)
    x_base = pid_b * L * d
    bc_base = pid_b * L * g * n + grp * n
    # Software pipelining: each chunk's u, Δ, z tiles are loaded one chunk ahead, as
    # loop-carried values, so that no step waits on device memory for them (loaded in
    # the chunk itself, the compiler sank the loads next to their first use).
    u_nx = _load_tile(u_ptr, x_base, seg_start, tt3, ch, cmask, d, L, EVEN)
    dl_nx = _load_tile(dl_ptr, x_base, seg_start, tt3, ch, cmask, d, L, EVEN)
    if HAS_Z:
        z_nx = _load_tile(z_ptr, x_base, seg_start, tt3, ch, cmask, d, L, EVEN)
    # The chunk's slots in the override and state index maps, a chunk ahead too (a
    # placeholder where there is no map).
    oi_nx = _load_idx(ovidx_ptr, seg_start, tt3, seg_end) if HAS_OV else tl.zeros([T, 1, 1], dtype=tl.int32)
    si_nx = _load_idx(sidx_ptr, seg_start, tt3, seg_end) if HAS_ST else tl.zeros([T, 1, 1], dtype=tl.int32)
    for t0 in range(seg_start, seg_end, T):
        u_raw = u_nx
        dl_raw = dl_nx
        u_nx = _load_tile(u_ptr, x_base, t0 + T, tt3, ch, cmask, d, L, EVEN)
        dl_nx = _load_tile(dl_ptr, x_base, t0 + T, tt3, ch, cmask, d, L, EVEN)
        if HAS_Z:
            z_raw = z_nx
            z_nx = _load_tile(z_ptr, x_base, t0 + T, tt3, ch, cmask, d, L, EVEN)
        oi = oi_nx
        si = si_nx
        if HAS_OV:
            oi_nx = _load_idx(ovidx_ptr, t0 + T, tt3, seg_end)
        if HAS_ST:
            si_nx = _load_idx(sidx_ptr, t0 + T, tt3, seg_end)
        tv3 = t0 + tt3
        tm3 = tv3 < seg_end
        x_off = x_base + tv3 * d + ch[None, None, :]  # [T, 1, BD]
        m_x = tm3 & cmask[None, None, :]
        u = u_raw.to(tl.float32)
        if not EVEN:
            u = tl.where(m_x, u, 0.0)  # rows past the segment: the next one's, or clamped
        dt, dl = _dt_of(dl_raw, bias, m_x, SOFTPLUS, HAS_BIAS, EVEN)
        dtu = dt * u
        h, ytile = _fwd_steps(h, dt, dtu, oi, si, t0, tt3, one, bc_base, nn, nmask, A2, B_ptr, C_ptr, ov_ptr,
                              st_ptr, ck_ptr, pid_b, dn, off_dn, m_dn, L, g, n, seg_end, n_ov, n_st, n_ck,
                              T, CK, HAS_OV, HAS_ST, EVEN, VEC)
        y = ytile + Dv * u
        if HAS_Z:
            zz = z_raw.to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        if EVEN:
            tl.store(y_ptr + x_off, y.to(y_ptr.dtype.element_ty))
        else:
            tl.store(y_ptr + x_off, y.to(y_ptr.dtype.element_ty), mask=m_x)

    # State-shaped loads and stores outside the loop go through the same helpers: a
    # tl.load or tl.store here could hand its coalesced layout to the loop's h.
    _store_state(hT_ptr, pid_b * dn, off_dn, h, (one + pid_s) == n_seg - 1, m_dn, VEC)


def scan_fwd(u, delta, A, Bg, Cg, D, z, bias, softplus, h0, sidx, n_st, ov_val, ovidx, plan, ck_every=0):
    """Launch the forward. u, delta, z ``[b, L, d]`` contiguous; A ``[d, n]`` fp32;
    Bg, Cg ``[b, L, g, n]`` fp32 contiguous; D, bias ``[d]`` (any float dtype: read as fp32) or None; h0 ``[b, d, n]``;
    ov_val ``[b, P, d, n]`` fp32 or None;
    sidx/ovidx int32 ``[L]`` (-1 = none) or None; ``plan`` from ``triton_scan.plan``.
    Returns (y in u's dtype, final state fp32, states ``[b, n_st, d, n]`` or None,
    checkpoints ``[b, ceil(L/ck_every), d, n]`` or None)."""
    b, L, d = u.shape
    g, n = Bg.shape[2], A.shape[1]
    r = d // g
    f32 = dict(device=u.device, dtype=torch.float32)
    y = torch.empty_like(u)
    hT = torch.empty(b, d, n, **f32)
    st = torch.empty(b, n_st, d, n, **f32) if sidx is not None else None
    n_ck = triton.cdiv(L, ck_every) if ck_every else 0
    ck = torch.empty(b, n_ck, d, n, **f32) if ck_every else None
    n_ov = ov_val.shape[1] if ov_val is not None else 0
    nblk = triton.cdiv(r, plan.BD)
    S, seg_len = plan.n_seg, plan.seg_len
    even, vec = _flags(L, n, r, plan, plan.T)
    dummy = hT
    if S > 1:
        sumP = torch.empty(b, S, d, n, **f32)
        sumS = torch.empty(b, S, d, n, **f32)
        _fwd_summary_kernel[(g * nblk, b, S - 1)](
            u, delta, A, Bg, bias if bias is not None else dummy,
            ov_val if ov_val is not None else dummy, ovidx if ovidx is not None else dummy,
            sumP, sumS, L, d, n, g, r, seg_len, S, n_ov,
            BD=plan.BD, NP=plan.NP, T=plan.T, SOFTPLUS=softplus, HAS_BIAS=bias is not None,
            HAS_OV=ov_val is not None, EVEN=even, VEC=vec, num_warps=plan.num_warps,
        )
    else:
        sumP = sumS = dummy
    _fwd_kernel[(g * nblk, b, S)](
        u, delta, A, Bg, Cg, D if D is not None else dummy, z if z is not None else u,
        bias if bias is not None else dummy, h0 if h0 is not None else dummy,
        ov_val if ov_val is not None else dummy, ovidx if ovidx is not None else dummy,
        sidx if sidx is not None else dummy, sumP, sumS,
        y, hT, st if st is not None else dummy, ck if ck is not None else dummy,
        L, d, n, g, r, seg_len, S, n_st, n_ov, n_ck,
        BD=plan.BD, NP=plan.NP, T=plan.T, CK=ck_every, SOFTPLUS=softplus,
        HAS_BIAS=bias is not None, HAS_D=D is not None, HAS_Z=z is not None, HAS_H0=h0 is not None,
        HAS_ST=sidx is not None, HAS_OV=ov_val is not None, EVEN=even, VEC=vec, num_warps=plan.num_warps,
    )
    return y, hT, st, ck
