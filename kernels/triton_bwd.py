"""Triton backward kernels of the Mamba-1 selective scan (DESIGN §3).

Same layout as the forward (``triton_fwd.py``): one thread per channel, its state in
registers, positions walked in chunks of ``T`` — here from the end. For each chunk
the states are recomputed from the checkpoint the forward stored just before it
(every ``T`` positions) into a ``[T, n, BD]`` register tile, then the adjoint
g_t = ∂loss/∂h_t is run backwards:

    g_t  = a_{t+1}·g_{t+1} + dy_t·C_t (+ dstates_t, + dfinal at t = L-1)
    override at t:  dvalue = g_t, and nothing flows to h_{t-1}, Δ_t, u_t, B_t
    otherwise:      dΔ_t = Σ_n g_t (u_t B_t + A a_t h_{t-1}),  du_t = Δ_t Σ_n g_t B_t + D dy_t
                    dB_t = Σ_d g_t Δ_t u_t,  dA += g_t a_t h_{t-1} Δ_t
    dC_t = Σ_d dy_t h_t;  dinitial_state = the adjoint carried to t = -1.

Sums over channels (dB, dC) are per program partials, summed by the caller; dA, dD
and dbias partials are per (batch, segment). No atomics: results are deterministic.
Within a warp, with n = 16 on compiled kernels, the per-step sums over its 32
channels are transposing butterflies (``triton_lanes.py``: 16 shuffles, not 80).

Layout note: state-shaped addresses use ``n`` times a stride ``sn`` (= 1) that is not
specialized, so the compiler cannot vectorize them along n. Otherwise it gives those
loads and stores (and, through them, the loop-carried accumulators) a layout with n
spread over lanes, which costs a shared-memory conversion every step. EVEN calls go
further: every state-shaped access goes through the 16-byte helpers of ``triton_state_io.py``, and
the input tiles are loaded a chunk ahead, as in the forward.
Segments (long L, few channels) first run ``_bwd_summary_kernel``
(``triton_bwd_summary.py``): each segment's
adjoint map g_in = P ⊙ g_out + G, folded by the earlier segments.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmlens.kernels.triton_bwd_summary import _bwd_summary_kernel
from ssmlens.kernels.triton_common import _SIZES, LOG2E, _dt_of, _flags, _load_idx, _load_tile
from ssmlens.kernels.triton_lanes import _store_lane_sum
from ssmlens.kernels.triton_state_io import _load_row, _load_state, _store_state


@triton.jit(do_not_specialize=_SIZES + ['sn'])
def _bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    ov_ptr, ovidx_ptr, sidx_ptr, ck_ptr, dout_ptr, dhT_ptr, dst_ptr, sumP_ptr, sumG_ptr,
    du_ptr, ddl_ptr, dz_ptr, dBp_ptr, dCp_ptr, dAp_ptr, dDp_ptr, dbp_ptr, dh0_ptr, dov_ptr,
    L, d, n, g, r, sn, seg_len, n_seg, n_st, n_ov, n_ck,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr, HAS_DST: tl.constexpr, HAS_OV: tl.constexpr,
    EVEN: tl.constexpr, VEC: tl.constexpr, LANES: tl.constexpr,
):
    """Grid (g·blocks, b, n_seg). ``ck[b, c]`` is h at position (c+1)·T - 1. EVEN, VEC
    as in the forward; LANES: dB, dC summed over channels by ``_lane_sum16``."""
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
    off_dn = ch[None, :] * n + nn[:, None] * sn
    m_dn = cmask[None, :] & nmask[:, None]
    # Every state-shaped access goes through _load_state / _store_state: with VEC, a
    # plain tl.load or tl.store of one can hand its own layout to the loop's tensors,
    # and the 16-byte accesses need n inside the thread, in order (a misaligned
    # address on the device, Triton 3.6, when the initial-state load did).
    A = _load_state(A_ptr, 0, off_dn, one == 0, m_dn, VEC)  # log2(e) is folded into Δ in the recompute
    A2 = A * LOG2E
    bias = tl.load(bias_ptr + ch, mask=cmask, other=0.0).to(tl.float32)[None, None, :] if HAS_BIAS else 0.0
    Dv = tl.load(D_ptr + ch, mask=cmask, other=0.0).to(tl.float32)[None, None, :] if HAS_D else 0.0
    Dv2 = tl.load(D_ptr + ch, mask=cmask, other=0.0)[None, :] if HAS_D else 0.0

    # Adjoint arriving at the segment's last state from everything after it.
    if HAS_DHT:
        gc = _load_state(dhT_ptr, pid_b * dn, off_dn, one == 0, m_dn, VEC)
    else:
        gc = tl.zeros([NP, BD], dtype=tl.float32)
    for jj in range(0, n_seg - 1 - pid_s):  # not _fold_maps: unrolled, it made the loop below spill
        s_row = (pid_b * n_seg + (n_seg - 1 - jj)) * dn
        gc = (_load_state(sumP_ptr, s_row, off_dn, one == 0, m_dn, VEC) * gc
              + _load_state(sumG_ptr, s_row, off_dn, one == 0, m_dn, VEC))

    dA_acc = tl.zeros([NP, BD], dtype=tl.float32)
    dD_acc = tl.zeros([1, BD], dtype=tl.float32)
    db_acc = tl.zeros([1, BD], dtype=tl.float32)
    seg_start = pid_s * seg_len
    seg_end = tl.minimum(seg_start + seg_len, L)
    n_chunks = tl.cdiv(seg_end - seg_start, T)
    x_base = pid_b * L * d
    bc_base = pid_b * L * g * n + grp * n
    p_base = (pid0 * tl.num_programs(1) + pid_b) * L * n  # dB/dC partials [g·blocks, b, L, n]
    lane = tl.arange(0, BD)[None, :]
    # The chunks' u, Δ, dout, z tiles are loaded one chunk ahead (see the forward).
    t0 = seg_start + (n_chunks - 1) * T
    u_nx = _load_tile(u_ptr, x_base, t0, tt3, ch, cmask, d, L, EVEN)
    dl_nx = _load_tile(dl_ptr, x_base, t0, tt3, ch, cmask, d, L, EVEN)
    do_nx = _load_tile(dout_ptr, x_base, t0, tt3, ch, cmask, d, L, EVEN)
    if HAS_Z:
        z_nx = _load_tile(z_ptr, x_base, t0, tt3, ch, cmask, d, L, EVEN)
    if HAS_OV:
        oi_nx = _load_idx(ovidx_ptr, t0, tt3, seg_end)
    if HAS_DST:
        si_nx = _load_idx(sidx_ptr, t0, tt3, seg_end)
    for i in range(0, n_chunks):
        t0 = seg_start + (n_chunks - 1 - i) * T
        t_nx = tl.maximum(t0 - T, 0)
        if HAS_OV:
            oi = oi_nx
            oi_nx = _load_idx(ovidx_ptr, t_nx, tt3, seg_end)
        if HAS_DST:
            si = si_nx
            si_nx = _load_idx(sidx_ptr, t_nx, tt3, seg_end)
        u_raw = u_nx
        dl_raw = dl_nx
        do_raw = do_nx
        u_nx = _load_tile(u_ptr, x_base, t_nx, tt3, ch, cmask, d, L, EVEN)
        dl_nx = _load_tile(dl_ptr, x_base, t_nx, tt3, ch, cmask, d, L, EVEN)
        do_nx = _load_tile(dout_ptr, x_base, t_nx, tt3, ch, cmask, d, L, EVEN)
        if HAS_Z:
            z_raw = z_nx
            z_nx = _load_tile(z_ptr, x_base, t_nx, tt3, ch, cmask, d, L, EVEN)
        tv3 = t0 + tt3
        tm3 = tv3 < seg_end
        x_off = x_base + tv3 * d + ch[None, None, :]
        m_x = tm3 & cmask[None, None, :]
        u = u_raw.to(tl.float32)
        dout = do_raw.to(tl.float32)
        if not EVEN:
            u = tl.where(m_x, u, 0.0)  # rows past the segment: the next one's, or clamped
            dout = tl.where(m_x, dout, 0.0)
        dt, dl = _dt_of(dl_raw, bias, m_x, SOFTPLUS, HAS_BIAS, EVEN)
        if SOFTPLUS:
            sdl = tl.sigmoid(dl)  # softplus'
        if HAS_Z:
            zz = z_raw.to(tl.float32)
            sg = tl.sigmoid(zz)
            dy = dout * zz * sg
        else:
            dy = dout
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=0)


        # State before the chunk: the checkpoint, or the initial state at t = 0.
        hs = _load_state(ck_ptr, (pid_b * n_ck + tl.maximum(t0 // T - 1, 0)) * dn, off_dn, (one + t0) > 0, m_dn, VEC)
        if HAS_H0:
            hs += _load_state(h0_ptr, pid_b * dn, off_dn, (one + t0) == 0, m_dn, VEC)

        # Recompute the chunk's states into a [T, NP, BD] register tile (and y for dz).
        h = hs
        H = tl.zeros([T, NP, BD], dtype=tl.float32)
        if HAS_Z:
            y_t = tl.zeros([T, 1, BD], dtype=tl.float32)
        for k in tl.static_range(T):
            sel = tt3 == k
            if EVEN:
                Bk = _load_row(B_ptr, bc_base + (t0 + k) * (g * n), nn, VEC)
            else:
                bc_off = bc_base + tl.minimum(t0 + k, L - 1) * (g * n) + nn[:, None]
                Bk = tl.load(B_ptr + bc_off, mask=nmask[:, None], other=0.0).to(tl.float32)
            dtuk = tl.sum(tl.where(sel, dt * u, 0.0), axis=0)
            h = tl.exp2(tl.sum(tl.where(sel, dt, 0.0), axis=0) * LOG2E * A) * h + dtuk * Bk
            if HAS_OV:
                ok = tl.sum(tl.where(sel, oi, 0), axis=0)
                v = _load_state(ov_ptr, (pid_b * n_ov + tl.maximum(ok, 0)) * dn, off_dn, ok >= 0, m_dn, VEC)
                h = tl.where(ok >= 0, v, h)
            H = tl.where(sel, h[None, :, :], H)
            if HAS_Z:
                if EVEN:
                    Ck = _load_row(C_ptr, bc_base + (t0 + k) * (g * n), nn, VEC)
                else:
                    Ck = tl.load(C_ptr + bc_off, mask=nmask[:, None], other=0.0).to(tl.float32)
                y_t = tl.where(sel, tl.sum(h * Ck, axis=0, keep_dims=True)[None, :, :], y_t)
        if HAS_Z:
            dz = dout * (y_t + Dv * u) * sg * (1.0 + zz * (1.0 - sg))
            tl.store(dz_ptr + x_off, dz.to(dz_ptr.dtype.element_ty), mask=m_x)

        # Run the adjoint backwards through the chunk; du and dΔ are stored per step.
        hk = h  # the chunk's last state
        for kk in tl.static_range(T):
            k = T - 1 - kk
            sel = tt3 == k
            t = t0 + k
            t_ok = (one + t) < seg_end
            if EVEN:
                Bk = _load_row(B_ptr, bc_base + t * (g * n), nn, VEC, 1)
                Ck = _load_row(C_ptr, bc_base + t * (g * n), nn, VEC, 1)
            else:
                bc_off = bc_base + tl.minimum(t, L - 1) * (g * n) + nn[:, None]
                Bk = tl.load(B_ptr + bc_off, mask=nmask[:, None], other=0.0).to(tl.float32)
                Ck = tl.load(C_ptr + bc_off, mask=nmask[:, None], other=0.0).to(tl.float32)
            if k > 0:
                hp = tl.sum(tl.where(tt3 == k - 1, H, 0.0), axis=0)
            else:
                hp = hs
            dyk = tl.sum(tl.where(sel, dy, 0.0), axis=0)
            gk = gc + dyk * Ck
            if HAS_DST:
                sk = tl.sum(tl.where(sel, si, 0), axis=0)
                gk += _load_state(dst_ptr, (pid_b * n_st + tl.maximum(sk, 0)) * dn, off_dn, sk >= 0, m_dn, VEC)
            _store_lane_sum(dCp_ptr, p_base + t * n, hk * dyk, nn, lane, sn, n, t_ok, LANES)
            if HAS_OV:
                ok = tl.sum(tl.where(sel, oi, 0), axis=0)
                _store_state(dov_ptr, (pid_b * n_ov + tl.maximum(ok, 0)) * dn, off_dn, gk, ok >= 0, m_dn, VEC)
                gk = tl.where(ok >= 0, 0.0, gk)
            dtk = tl.sum(tl.where(sel, dt, 0.0), axis=0)
            uk = tl.sum(tl.where(sel, u, 0.0), axis=0)
            # Not the recompute loop's expression, on purpose: were they equal, the compiler
            # would keep those exps from one loop to the next (64 registers: spills).
            ak = tl.exp2(dtk * A2)
            gah = gk * (ak * hp)  # g_t ⊙ a_t h_{t-1}: shared by dΔ and dA
            sgB = tl.sum(gk * Bk, axis=0, keep_dims=True)  # [1, BD]: shared by dΔ and du
            ddtk = uk * sgB + tl.sum(gah * A, axis=0, keep_dims=True)
            if SOFTPLUS:
                ddtk = ddtk * tl.sum(tl.where(sel, sdl, 0.0), axis=0)
            duk = dtk * sgB + dyk * Dv2
            m_row = cmask[None, :] & t_ok
            tl.store(ddl_ptr + x_base + t * d + ch[None, :], ddtk.to(ddl_ptr.dtype.element_ty), mask=m_row)
            tl.store(du_ptr + x_base + t * d + ch[None, :], duk.to(du_ptr.dtype.element_ty), mask=m_row)
            db_acc += tl.where(m_row, ddtk, 0.0)
            _store_lane_sum(dBp_ptr, p_base + t * n, gk * (dtk * uk), nn, lane, sn, n, t_ok, LANES)
            dA_acc += gah * dtk
            gc = ak * gk
            hk = hp

    _store_state(dAp_ptr, (pid_b * n_seg + pid_s) * dn, off_dn, dA_acc, one == 0, m_dn, VEC)
    v_off = (pid_b * n_seg + pid_s) * d + ch[None, :]
    tl.store(dDp_ptr + v_off, dD_acc, mask=cmask[None, :])
    tl.store(dbp_ptr + v_off, db_acc, mask=cmask[None, :])
    _store_state(dh0_ptr, pid_b * dn, off_dn, gc, (one + pid_s) == 0, m_dn, VEC)


def scan_bwd(u, delta, A, Bg, Cg, D, z, bias, softplus, h0, sidx, n_st, ov_val, ovidx, ck,
             dout, dhT, dst, plan):
    """Launch the backward. Inputs as for ``triton_fwd.scan_fwd``; ``ck`` the forward's
    checkpoints taken every ``plan.T_bwd`` positions; dout ``[b, L, d]``; dhT
    ``[b, d, n]`` or None; dst ``[b, n_st, d, n]`` or None. Returns grads
    (du, ddelta, dz | None in their inputs' dtypes; dA ``[d, n]``, dB, dC ``[b, L, g, n]``,
    dD, dbias ``[d]``, dh0 ``[b, d, n]``, dov ``[b, P, d, n]`` in fp32)."""
    b, L, d = u.shape
    g, n = Bg.shape[2], A.shape[1]
    r = d // g
    BD, NP, T, S, seg_len = plan.BD, plan.NP, plan.T_bwd, plan.n_seg, plan.seg_len
    nblk = triton.cdiv(r, BD)
    sn = 1  # stride of n in state-shaped tensors, passed unspecialized (see the module notes)
    even, vec = _flags(L, n, r, plan, T)
    f32 = dict(device=u.device, dtype=torch.float32)
    du = torch.empty_like(u)
    ddl = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dBp = torch.empty(g * nblk, b, L, n, **f32)
    dCp = torch.empty(g * nblk, b, L, n, **f32)
    dAp = torch.empty(b, S, d, n, **f32)
    dDp = torch.empty(b, S, d, **f32)
    dbp = torch.empty(b, S, d, **f32)
    dh0 = torch.empty(b, d, n, **f32)
    n_ov = ov_val.shape[1] if ov_val is not None else 0
    dov = torch.zeros(b, n_ov, d, n, **f32) if ov_val is not None else None
    dummy = dh0
    if S > 1:
        sumP = torch.empty(b, S, d, n, **f32)
        sumG = torch.empty(b, S, d, n, **f32)
        _bwd_summary_kernel[(g * nblk, b, S - 1)](
            delta, A, Cg, z if z is not None else u, bias if bias is not None else dummy, dout,
            ovidx if ovidx is not None else dummy, sidx if sidx is not None else dummy,
            dst if dst is not None else dummy, sumP, sumG, L, d, n, g, r, sn, seg_len, S, n_st,
            BD=BD, NP=NP, T=T, SOFTPLUS=softplus, HAS_BIAS=bias is not None, HAS_Z=z is not None,
            HAS_DST=dst is not None, HAS_OV=ov_val is not None, EVEN=even, VEC=vec, num_warps=plan.num_warps,
        )
    else:
        sumP = sumG = dummy
    _bwd_kernel[(g * nblk, b, S)](
        u, delta, A, Bg, Cg, D if D is not None else dummy, z if z is not None else u,
        bias if bias is not None else dummy, h0 if h0 is not None else dummy,
        ov_val if ov_val is not None else dummy, ovidx if ovidx is not None else dummy,
        sidx if sidx is not None else dummy, ck, dout, dhT if dhT is not None else dummy,
        dst if dst is not None else dummy, sumP, sumG,
        du, ddl, dz if dz is not None else du, dBp, dCp, dAp, dDp, dbp, dh0,
        dov if dov is not None else dummy,
        L, d, n, g, r, sn, seg_len, S, n_st, n_ov, ck.shape[1],
        BD=BD, NP=NP, T=T, SOFTPLUS=softplus, HAS_BIAS=bias is not None, HAS_D=D is not None,
        HAS_Z=z is not None, HAS_H0=h0 is not None, HAS_DHT=dhT is not None, HAS_DST=dst is not None,
        HAS_OV=ov_val is not None, EVEN=even, VEC=vec, LANES=vec and n == 16 and BD == 32 and plan.num_warps_bwd == 1,
        num_warps=plan.num_warps_bwd,
    )
    dB = dBp.view(g, nblk, b, L, n).sum(1).permute(1, 2, 0, 3)
    dC = dCp.view(g, nblk, b, L, n).sum(1).permute(1, 2, 0, 3)
    return du, ddl, dz, dAp.sum((0, 1)), dB, dC, dDp.sum((0, 1)), dbp.sum((0, 1)), dh0, dov
