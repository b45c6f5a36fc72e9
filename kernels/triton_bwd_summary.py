"""Summary pass of the backward selective scan over sequence segments (DESIGN §3).

With segments (``triton_bwd.py``), the adjoint reaching a segment's end from all later
segments is needed before that segment runs. This kernel gives each segment's adjoint
map g_in = P ⊙ g_out + G (G the adjoint that reaches h_{start-1} from inside the
segment, P = Π a_t, 0 with an override), folded by the main pass.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ssmlens.kernels.triton_common import _SIZES, LOG2E, _dt_of, _load_idx, _load_tile
from ssmlens.kernels.triton_state_io import _load_row, _load_state, _store_state

@triton.jit(do_not_specialize=_SIZES + ['sn'])
def _bwd_summary_kernel(
    dl_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, ovidx_ptr, sidx_ptr, dst_ptr, sumP_ptr, sumG_ptr,
    L, d, n, g, r, sn, seg_len, n_seg, n_st,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DST: tl.constexpr, HAS_OV: tl.constexpr, EVEN: tl.constexpr, VEC: tl.constexpr,
):
    """Grid (g·blocks, b, n_seg - 1) for segments 1..n_seg-1: G is the adjoint that
    reaches h_{start-1} from inside the segment, P = Π a_t (0 with an override)."""
    pid0 = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2) + 1
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
    A2 = _load_state(A_ptr, 0, off_dn, one == 0, m_dn, VEC) * LOG2E
    bias = tl.load(bias_ptr + ch, mask=cmask, other=0.0).to(tl.float32)[None, None, :] if HAS_BIAS else 0.0

    gc = tl.zeros([NP, BD], dtype=tl.float32)
    sdt = tl.zeros([1, BD], dtype=tl.float32)
    any_ov = tl.zeros([1, 1], dtype=tl.int32) - 1
    seg_start = pid_s * seg_len
    seg_end = tl.minimum(seg_start + seg_len, L)
    n_chunks = tl.cdiv(seg_end - seg_start, T)
    x_base = pid_b * L * d
    bc_base = pid_b * L * g * n + grp * n
    t0 = seg_start + (n_chunks - 1) * T  # tiles a chunk ahead, as in _bwd_kernel
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
        dl_raw = dl_nx
        do_raw = do_nx
        if HAS_OV:
            oi = oi_nx
            oi_nx = _load_idx(ovidx_ptr, t_nx, tt3, seg_end)
        if HAS_DST:
            si = si_nx
            si_nx = _load_idx(sidx_ptr, t_nx, tt3, seg_end)
        dl_nx = _load_tile(dl_ptr, x_base, t_nx, tt3, ch, cmask, d, L, EVEN)
        do_nx = _load_tile(dout_ptr, x_base, t_nx, tt3, ch, cmask, d, L, EVEN)
        if HAS_Z:
            z_raw = z_nx
            z_nx = _load_tile(z_ptr, x_base, t_nx, tt3, ch, cmask, d, L, EVEN)
        tv3 = t0 + tt3
        tm3 = tv3 < seg_end
        m_x = tm3 & cmask[None, None, :]
        dt, dl = _dt_of(dl_raw, bias, m_x, SOFTPLUS, HAS_BIAS, EVEN)
        sdt += tl.sum(dt, axis=0)
        dy = do_raw.to(tl.float32)
        if not EVEN:
            dy = tl.where(m_x, dy, 0.0)
        if HAS_Z:
            zz = z_raw.to(tl.float32)
            dy = dy * zz * tl.sigmoid(zz)
        if HAS_OV:
            any_ov = tl.maximum(any_ov, tl.max(oi, axis=0))
        for kk in tl.static_range(T):
            k = T - 1 - kk
            sel = tt3 == k
            if EVEN:
                Ck = _load_row(C_ptr, bc_base + (t0 + k) * (g * n), nn, VEC)
            else:
                bc_off = bc_base + tl.minimum(t0 + k, L - 1) * (g * n) + nn[:, None]
                Ck = tl.load(C_ptr + bc_off, mask=nmask[:, None], other=0.0).to(tl.float32)
            gk = gc + tl.sum(tl.where(sel, dy, 0.0), axis=0) * Ck
            if HAS_DST:
                sk = tl.sum(tl.where(sel, si, 0), axis=0)
                gk += _load_state(dst_ptr, (pid_b * n_st + tl.maximum(sk, 0)) * dn, off_dn, sk >= 0, m_dn, VEC)
            if HAS_OV:
                gk = tl.where(tl.sum(tl.where(sel, oi, 0), axis=0) >= 0, 0.0, gk)
            gc = tl.exp2(tl.sum(tl.where(sel, dt, 0.0), axis=0) * A2) * gk
    P = tl.exp2(A2 * sdt)
    if HAS_OV:
        P = tl.where(any_ov >= 0, 0.0, P)
    s_row = (pid_b * n_seg + pid_s) * dn
    _store_state(sumP_ptr, s_row, off_dn, P, one == 0, m_dn, VEC)
    _store_state(sumG_ptr, s_row, off_dn, gc, one == 0, m_dn, VEC)
