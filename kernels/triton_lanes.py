"""Sums over the 32 channels of a warp for the backward scan's dB and dC (DESIGN §3).

Per step the backward needs Σ over channels of a ``[16, 32]`` tile (n rows in each
thread, one channel per lane). ``_lane_sum16`` is a transposing butterfly: at each
level a lane keeps half of its rows and sends the other half to its partner
(``shfl.sync.bfly``), so 16 shuffles and 16 adds instead of tl.sum's 80 of each; lane
c ends with row ``_lane_row16(c)``. ``_store_lane_sum`` falls back to tl.sum elsewhere.
"""

from __future__ import annotations

import triton
import triton.language as tl

@triton.jit
def _halve(x, lane, BIT: tl.constexpr):
    """One level of a transposing butterfly sum over lanes. x ``[2m, BD]`` (rows in the
    thread, one channel per lane) -> ``[m, BD]``: row i of a lane whose bit BIT is clear
    is x[2i] plus its partner's x[2i]; if set, x[2i + 1] plus the partner's. Adjacent
    rows are paired so that the split needs no reordering of the thread's registers."""
    lo, hi = tl.split(tl.permute(tl.reshape(x, [x.shape[0] // 2, 2, x.shape[1]]), [0, 2, 1]))
    up = ((lane >> BIT) & 1) == 1
    recv = tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, $2, 0x1f, -1;", "=f,f,r",
                                     [tl.where(up, lo, hi), tl.full([1, 1], 1 << BIT, tl.int32)],
                                     dtype=tl.float32, is_pure=True, pack=1)
    return tl.where(up, hi, lo) + recv


@triton.jit
def _lane_sum16(x, lane):
    """Σ over the 32 lanes of x ``[16, 32]`` -> ``[1, 32]``: lane c holds the sum of row
    ``_lane_row16(c)``. 16 shuffles and 16 adds, where tl.sum(x, 1) takes 80 of each
    (it reduces each of the 16 rows over all lanes and keeps every result everywhere)."""
    y = _halve(_halve(_halve(_halve(x, lane, 4), lane, 3), lane, 2), lane, 1)
    return y + tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 1, 0x1f, -1;", "=f,f", [y],
                                         dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _lane_row16(lane):
    """The row whose sum ``_lane_sum16`` leaves in each lane: bits 4, 3, 2, 1 of the lane
    chose the low or high row of each pair, from the lowest bit of the row up."""
    return ((lane >> 4) & 1) + ((lane >> 3) & 1) * 2 + ((lane >> 2) & 1) * 4 + ((lane >> 1) & 1) * 8


@triton.jit
def _store_lane_sum(ptr, base, x, nn, lane, sn, n, t_ok, LANES: tl.constexpr):
    """Store Σ over channels of x ``[NP, BD]`` (a row of dB or dC) at ptr + base + n."""
    if LANES:
        tl.store(ptr + base + _lane_row16(lane) * sn, _lane_sum16(x, lane), mask=((lane & 1) == 0) & t_ok)
    else:
        xs = tl.sum(x, axis=1, keep_dims=True)  # [NP, 1]: a sum across the threads
        tl.store(ptr + base + nn[:, None] * sn, xs, mask=(nn[:, None] < n) & t_ok)
