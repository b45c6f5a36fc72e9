"""State-shaped loads and stores of the selective-scan kernels, and B/C rows (DESIGN §3).

A state-shaped tile is ``[NP, BD]`` with n inside the thread (one channel per thread).
With VEC (compiled kernels, n a multiple of 4, rows 16-byte aligned) each thread moves
its own row as 16-byte vectors through inline PTX, in the tile's own layout: a
tl.load/tl.store would first move h into a coalesced layout through shared memory at
every step of a loop (benchmarks/NOTES_scan.md, v5 and v7). B and C rows are read by
every thread, through the read-only path.
"""

from __future__ import annotations

import triton
import triton.language as tl

@triton.jit
def _store_state(ptr, row, off, h, row_ok, m_dn, VEC: tl.constexpr):
    """Store a state-shaped ``[NP, BD]`` tile (n inside the thread) at ``ptr + row +
    off`` (row: a scalar offset, off: int32 ``[NP, BD]``) where ``row_ok & m_dn``.
    With VEC (n == NP, a multiple of 4: m_dn is all true, rows 16-byte aligned) each
    thread writes its own row as 16-byte vectors, in the tile's own layout: tl.store
    would first move h into a coalesced layout (n over lanes) through shared memory,
    at every step of the loop, stored or not (benchmarks/NOTES_scan.md)."""
    if VEC:
        base = (ptr + row).to(tl.int64)
        tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .b64 a; setp.ne.b32 p, $16, 0; mad.wide.s32 a, $8, 4, $4;\n"
            "@p st.global.v4.f32 [a], {$12, $13, $14, $15};\n"
            "mov.b32 $0, 0; mov.b32 $1, 0; mov.b32 $2, 0; mov.b32 $3, 0; }",
            "=r,=r,=r,=r,l,l,l,l,r,r,r,r,f,f,f,f,r,r,r,r",
            [base, off, h, row_ok.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=4)
    else:
        tl.store(ptr + row + off, h, mask=row_ok & m_dn)


@triton.jit
def _load_state(ptr, row, off, row_ok, m_dn, VEC: tl.constexpr):
    """Load a state-shaped fp32 ``[NP, BD]`` tile, 0 where not ``row_ok & m_dn``;
    addresses and VEC as for ``_store_state``."""
    if VEC:
        base = (ptr + row).to(tl.int64)
        return tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .b64 a; setp.ne.b32 p, $12, 0; mad.wide.s32 a, $8, 4, $4;\n"
            "mov.b32 $0, 0; mov.b32 $1, 0; mov.b32 $2, 0; mov.b32 $3, 0;\n"
            "@p ld.global.v4.f32 {$0, $1, $2, $3}, [a]; }",
            "=f,=f,=f,=f,l,l,l,l,r,r,r,r,r,r,r,r",
            [base, off, row_ok.to(tl.int32)], dtype=tl.float32, is_pure=False, pack=4)
    else:
        return tl.load(ptr + row + off, mask=row_ok & m_dn, other=0.0)


@triton.jit
def _load_row(ptr, row, nn, VEC: tl.constexpr, SALT: tl.constexpr = 0):
    """One fp32 row ``[NP, 1]`` of B or C at ``ptr + row + nn`` (every thread holds it
    all). With VEC (n == NP, a multiple of 4) and fp32 B, C: through the read-only path
    (ld.global.nc), so that the compiler may move these loads across the stores of the
    loop (states, checkpoints), which it must otherwise assume could write B and C.
    SALT (an operand the instruction ignores) keeps two loads of one row apart: the
    backward reads each row twice, and holding them from one loop to the next spilled."""
    if VEC and ptr.dtype.element_ty == tl.float32:
        base = (ptr + row).to(tl.int64)
        return tl.inline_asm_elementwise(
            "{ .reg .b64 a; mad.wide.s32 a, $8, 4, $4;\n"
            "ld.global.nc.v4.f32 {$0, $1, $2, $3}, [a]; }",
            "=f,=f,=f,=f,l,l,l,l,r,r,r,r,r,r,r,r",
            [base, nn[:, None], tl.full([1, 1], SALT, tl.int32)], dtype=tl.float32, is_pure=True, pack=4)
    else:
        return tl.load(ptr + row + nn[:, None]).to(tl.float32)
