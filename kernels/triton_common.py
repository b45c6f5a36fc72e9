"""What every selective-scan kernel reads per chunk (DESIGN §3): Δ, input tiles, index maps.

Shared by the forward (``triton_fwd.py``, ``triton_fwd_summary.py``) and the backward
(``triton_bwd.py``, ``triton_bwd_summary.py``) kernels: the compile-time constants and
specialization list, Δ from its raw tile (bias, softplus), the ``[T, 1, BD]`` tiles of
the per-position inputs and the chunk's slots in an index map, and the launch flags.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

# ``r`` (channels per group) must stay unspecialized: were channel offsets known to be
# aligned, the coalescing pass would vectorize the [T, 1, BD] tiles along channels and
# spread T over lanes, and that layout would reach the recurrence (8x the exps).
# The counts are not specialized either, so the segment-count tuning never recompiles.
# L, g and above all ``seg_len`` stay specialized: with seg_len unspecialized the
# forward ran 2x slower on the H100 with Triton 3.6 (benchmarks/NOTES_scan.md).
_SIZES = ["r", "n_seg", "n_st", "n_ov", "n_ck"]

# Inline PTX (the 16-byte state-row accesses of triton_state_io.py) exists only for
# compiled kernels;
# this module is also loaded under Triton's interpreter.
# SSMLENS_SCAN_PTX=0 switches it off (to measure what it buys).
PTX = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "on", "yes")
                   and os.environ.get("SSMLENS_SCAN_PTX", "1") != "0")


@triton.jit
def _softplus(x):
    # log(1 + exp(x)) in fp32; above 20 it equals x to fp32 precision. Written with
    # exp2/log2, which compile to single approximate instructions (tl.log inlines
    # libdevice's logf, branches and all). No clamp of x in the other branch: NaN must
    # stay NaN (a clamp by tl.minimum mapped it to softplus(20)); exp2 of a large x is
    # inf there, in the branch not taken. softplus(-inf) = log2(1 + 0) = 0, as torch's.
    return tl.where(x > 20.0, x, LN2 * tl.log2(1.0 + tl.exp2(x * LOG2E)))


@triton.jit
def _dt_of(dl, bias, m_x, SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN: tl.constexpr):
    """Δ tile ``[T, 1, BD]`` in fp32 from the raw one (0 outside the mask unless EVEN,
    so those steps keep h), and the value before softplus (its derivative needs it)."""
    dl = dl.to(tl.float32)
    if HAS_BIAS:
        dl = dl + bias
    if SOFTPLUS:
        dt = _softplus(dl)
    else:
        dt = dl
    if not EVEN:
        dt = tl.where(m_x, dt, 0.0)
    return dt, dl


@triton.jit
def _load_tile(ptr, x_base, t0, tt3, ch, cmask, d, L, EVEN: tl.constexpr):
    """The ``[T, 1, BD]`` tile of a ``[b, L, d]`` input at positions t0.., raw dtype.
    Rows past L are clamped (read but never used), so that the next chunk can be
    loaded a chunk ahead; channels past the group read 0 unless EVEN."""
    x_off = x_base + tl.minimum(t0 + tt3, L - 1) * d + ch[None, None, :]
    if EVEN:
        return tl.load(ptr + x_off)
    else:
        return tl.load(ptr + x_off, mask=cmask[None, None, :], other=0.0)


@triton.jit
def _load_idx(ptr, t0, tt3, seg_end):
    """The chunk's slots ``[T, 1, 1]`` in an index map (-1: none, or past seg_end)."""
    return tl.load(ptr + t0 + tt3, mask=(t0 + tt3) < seg_end, other=-1)


def _flags(L: int, n: int, r: int, plan, T: int) -> tuple[bool, bool]:
    """(EVEN, VEC) for a launch: EVEN drops masks and clamps; VEC moves state rows as
    16-byte vectors (compiled kernels only)."""
    even = n == plan.NP and L % T == 0 and r % plan.BD == 0
    return even, bool(even and n % 4 == 0 and PTX)
