"""Triton forward kernels of the Mamba-1 selective scan (DESIGN §3).

Layout: one thread owns one channel's whole state h ``[n]`` in registers; a program
owns ``BD = 32·num_warps`` channels of one group of one sequence, and walks its
positions in chunks of ``T``. Per chunk the per-position inputs are loaded as
``[T, 1, BD]`` tiles (coalesced, T positions ahead: that is the prefetch), the
channel-wide terms (softplus, Δ·u, the gate) are computed once per element, and the
recurrence then steps through the chunk in registers (``tl.static_range``: picking
row k of a tile whose T axis lives inside the thread is a register move). y_t = C_t·h_t
is a reduction inside the thread, so the loop has no shuffles and no barriers.

Long sequences with few channels are cut into ``n_seg`` segments scanned in
parallel: ``_fwd_summary_kernel`` gives each segment's map h_end = P ⊙ h_start + S
(P = exp(A·ΣΔ), or 0 if an override sits in the segment), and ``_fwd_kernel`` folds
the earlier segments' maps into its starting state.

Options, all as compile-time flags: Δ bias and softplus, D skip, silu(z) gate,
initial state, states written only at positions with ``sidx[t] >= 0`` (slot
``sidx[t]`` of ``states``), overrides ``(a_t, b_t) := (0, values[ovidx[t]])``, and
checkpoints of h every ``CK`` positions for the backward pass (``triton_bwd.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)

# ``r`` (channels per group) must stay unspecialized: were channel offsets known to be
# aligned, the coalescing pass would vectorize the [T, 1, BD] tiles along channels and
# spread T over lanes, and that layout would reach the recurrence (8x the exps).
# The counts are not specialized either, so the segment-count tuning never recompiles.
# L, g and above all ``seg_len`` stay specialized: with seg_len unspecialized the
# forward ran 2x slower on the H100 with Triton 3.6 (benchmarks/NOTES_scan.md).
_SIZES = ["r", "n_seg", "n_st", "n_ov", "n_ck"]


@triton.jit
def _softplus(x):
    # log(1 + exp(x)) in fp32; above 20 it equals x to fp32 precision.
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def _chunk_dt(dl_ptr, bias, x_off, m_x, SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Δ tile ``[T, 1, BD]`` in fp32 (0 outside the mask, so those steps keep h) and
    the value before softplus (its derivative needs it)."""
    dl = tl.load(dl_ptr + x_off, mask=m_x, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dl = dl + bias
    if SOFTPLUS:
        dt = _softplus(dl)
    else:
        dt = dl
    return tl.where(m_x, dt, 0.0), dl


# In the step loops, row k of a [T, ...] tile is read as tl.sum(tl.where(tt3 == k, x, 0), 0):
# the T axis lives inside the thread, so once unrolled this is a register pick. Scalars
# that enter masks are first made [1, 1] tensors (`one + t`): Triton's interpreter
# mishandles scalar & tensor masks. Both idioms are written inline, not as helper
# functions, because every nested jit call costs the interpreter a re-patch of tl.


@triton.jit(do_not_specialize=_SIZES)
def _fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    ov_ptr, ovidx_ptr, sidx_ptr, sumP_ptr, sumS_ptr,
    y_ptr, hT_ptr, st_ptr, ck_ptr,
    L, d, n, g, r, seg_len, n_seg, n_st, n_ov, n_ck,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, CK: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_ST: tl.constexpr, HAS_OV: tl.constexpr,
):
    """Grid (g·blocks, b, n_seg). Writes y ``[b, L, d]``, the final state (last
    segment), requested states and, if CK > 0, h at every position t with
    (t + 1) % CK == 0 into ``ck[b, (t + 1) // CK - 1]``."""
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
    A2 = tl.load(A_ptr + off_dn, mask=m_dn, other=0.0) * LOG2E
    bias = tl.load(bias_ptr + ch, mask=cmask, other=0.0)[None, None, :] if HAS_BIAS else 0.0
    Dv = tl.load(D_ptr + ch, mask=cmask, other=0.0)[None, None, :] if HAS_D else 0.0

    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * dn + off_dn, mask=m_dn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([NP, BD], dtype=tl.float32)
    for j in range(0, pid_s):  # fold the maps of the earlier segments
        s_off = (pid_b * n_seg + j) * dn + off_dn
        h = tl.load(sumP_ptr + s_off, mask=m_dn, other=0.0) * h + tl.load(sumS_ptr + s_off, mask=m_dn, other=0.0)

    seg_start = pid_s * seg_len
    seg_end = tl.minimum(seg_start + seg_len, L)
    x_base = pid_b * L * d
    bc_base = pid_b * L * g * n + grp * n
    for t0 in range(seg_start, seg_end, T):
        tv3 = t0 + tt3
        tm3 = tv3 < seg_end
        x_off = x_base + tv3 * d + ch[None, None, :]  # [T, 1, BD]
        m_x = tm3 & cmask[None, None, :]
        u = tl.load(u_ptr + x_off, mask=m_x, other=0.0).to(tl.float32)
        dt, dl = _chunk_dt(dl_ptr, bias, x_off, m_x, SOFTPLUS, HAS_BIAS)
        dtu = dt * u
        if HAS_OV:
            oi = tl.load(ovidx_ptr + tv3, mask=tm3, other=-1)
        if HAS_ST:
            si = tl.load(sidx_ptr + tv3, mask=tm3, other=-1)
        ytile = tl.zeros([T, 1, BD], dtype=tl.float32)
        for k in tl.static_range(T):
            sel = tt3 == k
            t = t0 + k
            # Rows past the end are clamped, not masked: there Δ = 0 and h stays put.
            bc_off = bc_base + tl.minimum(t, L - 1) * (g * n) + nn[:, None]  # [NP, 1]
            Bk = tl.load(B_ptr + bc_off, mask=nmask[:, None], other=0.0).to(tl.float32)
            Ck = tl.load(C_ptr + bc_off, mask=nmask[:, None], other=0.0).to(tl.float32)
            dtk = tl.sum(tl.where(sel, dt, 0.0), axis=0)  # [1, BD]
            dtuk = tl.sum(tl.where(sel, dtu, 0.0), axis=0)
            h = tl.exp2(dtk * A2) * h + dtuk * Bk
            if HAS_OV:
                ok = tl.sum(tl.where(sel, oi, 0), axis=0)  # [1, 1]
                v_off = (pid_b * n_ov + tl.maximum(ok, 0)) * dn + off_dn
                v = tl.load(ov_ptr + v_off, mask=(ok >= 0) & m_dn, other=0.0).to(tl.float32)
                h = tl.where(ok >= 0, v, h)
            if HAS_ST:
                sk = tl.sum(tl.where(sel, si, 0), axis=0)
                s_off = (pid_b * n_st + tl.maximum(sk, 0)) * dn + off_dn
                tl.store(st_ptr + s_off, h, mask=(sk >= 0) & m_dn)
            if CK > 0:
                if (k + 1) % CK == 0:
                    c_off = (pid_b * n_ck + (t + 1) // CK - 1) * dn + off_dn
                    tl.store(ck_ptr + c_off, h, mask=m_dn & ((one + t) < seg_end))
            yk = tl.sum(h * Ck, axis=0, keep_dims=True)  # [1, BD]: inside the thread
            ytile = tl.where(sel, yk[None, :, :], ytile)
        y = ytile + Dv * u
        if HAS_Z:
            zz = tl.load(z_ptr + x_off, mask=m_x, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + x_off, y.to(y_ptr.dtype.element_ty), mask=m_x)

    tl.store(hT_ptr + pid_b * dn + off_dn, h, mask=m_dn & ((one + pid_s) == n_seg - 1))


@triton.jit(do_not_specialize=_SIZES)
def _fwd_summary_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, bias_ptr, ov_ptr, ovidx_ptr, sumP_ptr, sumS_ptr,
    L, d, n, g, r, seg_len, n_seg, n_ov,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_OV: tl.constexpr,
):
    """Grid (g·blocks, b, n_seg - 1): each segment's map h_end = P ⊙ h_start + S, with
    S its end state from h_start = 0 and P = exp(A·ΣΔ) (0 if it holds an override)."""
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
    dn = d * n
    off_dn = ch[None, :] * n + nn[:, None]
    m_dn = cmask[None, :] & nmask[:, None]
    A2 = tl.load(A_ptr + off_dn, mask=m_dn, other=0.0) * LOG2E
    bias = tl.load(bias_ptr + ch, mask=cmask, other=0.0)[None, None, :] if HAS_BIAS else 0.0

    h = tl.zeros([NP, BD], dtype=tl.float32)
    sdt = tl.zeros([1, BD], dtype=tl.float32)
    any_ov = tl.zeros([1, 1], dtype=tl.int32) - 1
    seg_start = pid_s * seg_len
    seg_end = tl.minimum(seg_start + seg_len, L)
    x_base = pid_b * L * d
    bc_base = pid_b * L * g * n + grp * n
    for t0 in range(seg_start, seg_end, T):
        tv3 = t0 + tt3
        tm3 = tv3 < seg_end
        x_off = x_base + tv3 * d + ch[None, None, :]
        m_x = tm3 & cmask[None, None, :]
        u = tl.load(u_ptr + x_off, mask=m_x, other=0.0).to(tl.float32)
        dt, dl = _chunk_dt(dl_ptr, bias, x_off, m_x, SOFTPLUS, HAS_BIAS)
        dtu = dt * u
        sdt += tl.sum(dt, axis=0)
        if HAS_OV:
            oi = tl.load(ovidx_ptr + tv3, mask=tm3, other=-1)
            any_ov = tl.maximum(any_ov, tl.max(oi, axis=0))
        for k in tl.static_range(T):
            sel = tt3 == k
            bc_off = bc_base + tl.minimum(t0 + k, L - 1) * (g * n) + nn[:, None]
            Bk = tl.load(B_ptr + bc_off, mask=nmask[:, None], other=0.0).to(tl.float32)
            h = tl.exp2(tl.sum(tl.where(sel, dt, 0.0), axis=0) * A2) * h + tl.sum(tl.where(sel, dtu, 0.0), axis=0) * Bk
            if HAS_OV:
                ok = tl.sum(tl.where(sel, oi, 0), axis=0)
                v_off = (pid_b * n_ov + tl.maximum(ok, 0)) * dn + off_dn
                v = tl.load(ov_ptr + v_off, mask=(ok >= 0) & m_dn, other=0.0).to(tl.float32)
                h = tl.where(ok >= 0, v, h)
    P = tl.exp2(A2 * sdt)
    if HAS_OV:
        P = tl.where(any_ov >= 0, 0.0, P)
    s_off = (pid_b * n_seg + pid_s) * dn + off_dn
    tl.store(sumP_ptr + s_off, P, mask=m_dn)
    tl.store(sumS_ptr + s_off, h, mask=m_dn)


def scan_fwd(u, delta, A, Bg, Cg, D, z, bias, softplus, h0, sidx, n_st, ov_val, ovidx, plan, ck_every=0):
    """Launch the forward. u, delta, z ``[b, L, d]`` contiguous; A ``[d, n]`` fp32;
    Bg, Cg ``[b, L, g, n]`` contiguous; D, bias ``[d]`` fp32 or None; h0 ``[b, d, n]``;
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
    dummy = hT
    if S > 1:
        sumP = torch.empty(b, S, d, n, **f32)
        sumS = torch.empty(b, S, d, n, **f32)
        _fwd_summary_kernel[(g * nblk, b, S - 1)](
            u, delta, A, Bg, bias if bias is not None else dummy,
            ov_val if ov_val is not None else dummy, ovidx if ovidx is not None else dummy,
            sumP, sumS, L, d, n, g, r, seg_len, S, n_ov,
            BD=plan.BD, NP=plan.NP, T=plan.T, SOFTPLUS=softplus, HAS_BIAS=bias is not None,
            HAS_OV=ov_val is not None, num_warps=plan.num_warps,
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
        HAS_ST=sidx is not None, HAS_OV=ov_val is not None, num_warps=plan.num_warps,
    )
    return y, hT, st, ck
