"""`triton` backend of the selective scan: launch plan, autograd Function, entry point.

``selective_scan_triton`` takes the normalized call of ``ssmlens.kernels.scan`` and runs the
kernels of ``triton_fwd.py`` (forward) and ``triton_bwd.py`` (backward), with their
helpers in ``triton_common.py``, ``triton_state_io.py``, ``triton_lanes.py`` and the
segment summaries in ``triton_fwd_summary.py`` / ``triton_bwd_summary.py``. When any
input needs a gradient, the forward also stores h every ``T_bwd`` positions
(checkpoints) and the call goes through ``_ScanFunction``, so gradients reach u, Δ,
A, B, C, D, z, the Δ bias, the initial state and the override values — attribution
can differentiate with respect to a hidden state.

On CUDA tensors the compiled kernels run. On CPU tensors the same kernels run under
Triton's interpreter, which needs ``TRITON_INTERPRET=1`` before ``triton`` is first
imported; if the kernel modules were imported before the switch, interpreted copies
of them are loaded on first use (``triton_loader.py``). On CUDA the segment counts are
tuned once per kind of call by timing (``_tune_segments``): the first call of a new
shape runs the kernels a few extra times.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from types import ModuleType

import torch
import triton  # noqa: F401  (this backend exists where Triton does: kernels.scan tries this import)
from torch import Tensor

from ssmlens.kernels.triton_loader import kernel_modules


@dataclass(frozen=True)
class Plan:
    """How a call is cut into programs. BD channels per program (one per thread at
    BD = 32·num_warps), NP ≥ n (power of two), chunks of T positions forward and
    T_bwd backward (= the checkpoint interval), ``n_seg`` segments of ``seg_len``."""

    BD: int
    NP: int
    T: int
    num_warps: int
    T_bwd: int
    BD_bwd: int
    num_warps_bwd: int
    n_seg: int
    seg_len: int
    n_seg_bwd: int
    seg_len_bwd: int


_OVERRIDES: dict = {}


@contextlib.contextmanager
def override_plan(**fields):
    """Force plan fields (``BD``, ``T``, ``n_seg``, ...) inside the block: for tests of
    segmentation on small inputs and for benchmark sweeps."""
    old = dict(_OVERRIDES)
    _OVERRIDES.update(fields)
    try:
        yield
    finally:
        _OVERRIDES.clear()
        _OVERRIDES.update(old)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: small, so that tests see segmentation


def _segments(L: int, T: int, want: int) -> tuple[int, int]:
    """(n_seg, seg_len) for about ``want`` segments of a multiple of T positions."""
    seg_len = math.ceil(math.ceil(L / max(1, want)) / T) * T
    return math.ceil(L / seg_len), seg_len


def plan(b: int, L: int, d: int, n: int, g: int, device: torch.device) -> Plan:
    """Launch plan for a call; ``override_plan`` fields win. On CUDA the segment
    counts are then tuned by timing (``_tune_segments``) unless overridden."""
    o = _OVERRIDES
    NP = max(2, 1 << (n - 1).bit_length())
    num_warps = o.get("num_warps", 1)
    BD = o.get("BD", 32 * num_warps)
    # Registers: tiles of T per thread forward; a [T_bwd, NP] state tile backward
    # (T_bwd = 8 spilled on sm_90 and ran twice as slow as 4: benchmarks/NOTES_scan.md).
    T_bwd = o.get("T_bwd", max(2, min(4, 64 // NP)))
    T = o.get("T", max(T_bwd, min(16, 256 // NP)))
    if T % T_bwd:
        raise ValueError(f"triton scan plan: T={T} must be a multiple of T_bwd={T_bwd}")
    num_warps_bwd = o.get("num_warps_bwd", 1)
    BD_bwd = o.get("BD_bwd", 32 * num_warps_bwd)
    # Segments: a sequence's positions are walked by one warp, so few channels and a
    # long L leave the GPU idle; cut L until there are about 8 warps per SM, keeping
    # segments of 128 positions or more (each costs a summary pass).
    units = b * g * math.ceil((d // g) / BD)
    want = 1
    target = 8 * _sm_count(device)
    if units < target:
        want = min(math.ceil(target / units), max(1, L // 128))
    n_seg, seg_len = _segments(L, T, o.get("n_seg", want))
    n_seg_bwd, seg_len_bwd = _segments(L, T_bwd, o.get("n_seg_bwd", o.get("n_seg", want)))
    return Plan(BD=BD, NP=NP, T=T, num_warps=num_warps, T_bwd=T_bwd, BD_bwd=BD_bwd,
                num_warps_bwd=num_warps_bwd, n_seg=n_seg, seg_len=seg_len,
                n_seg_bwd=n_seg_bwd, seg_len_bwd=seg_len_bwd)


_TUNED: dict = {}


def _tune_segments(key, L: int, T: int, units: int, launch) -> tuple[int, int]:
    """Fastest (n_seg, seg_len) for this kind of call, by timing ``launch(n_seg,
    seg_len)`` (CUDA events; each candidate run once untimed, then the best of three
    rounds over all candidates: rounds, not three runs in a row, so that a GPU clock
    still ramping up at the first call does not favour the later candidates); cached
    per key. Segment counts are runtime arguments: no candidate costs a compile."""
    if key in _TUNED:
        return _TUNED[key]
    cands = []
    for want in (1, 2, 4, 8, 12, 16, 24, 32, 64):
        c = _segments(L, T, want)
        if (want > 1 and c[1] < 4 * T) or units * c[0] > 64 * 1024:
            break
        if c not in cands:
            cands.append(c)
    for c in cands:
        launch(*c)
    ms = {c: float("inf") for c in cands}
    for _ in range(3):
        for c in cands:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            launch(*c)
            end.record()
            end.synchronize()
            ms[c] = min(ms[c], start.elapsed_time(end))
    best = min(cands, key=ms.get)
    _TUNED[key] = best
    return best


def _tunable(u: Tensor) -> bool:
    return u.is_cuda and "n_seg" not in _OVERRIDES and not torch.cuda.is_current_stream_capturing()


def _key(kind, u, delta, Bg, A, flags) -> tuple:
    return (kind, tuple(u.shape), Bg.shape[2], A.shape[1], u.dtype, delta.dtype, Bg.dtype, flags, u.device)


# The scan's kernel modules, each after those it imports from (``triton_loader``).
_SCAN_MODULES = ("triton_common", "triton_state_io", "triton_lanes", "triton_fwd_summary", "triton_fwd",
                 "triton_bwd_summary", "triton_bwd")


def _modules(interpret: bool) -> tuple[ModuleType, ModuleType]:
    """(forward module, backward module) whose kernels suit the tensors' device."""
    mods = kernel_modules(_SCAN_MODULES, interpret)
    return mods[-3], mods[-1]


@dataclass
class _Call:
    """Non-tensor part of one call, handed to the autograd Function."""

    softplus: bool
    sidx: Tensor | None
    n_st: int
    ovidx: Tensor | None
    plan: Plan
    fwd: ModuleType
    bwd: ModuleType


class _ScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, Bg, Cg, D, z, bias, h0, ov_val, call: _Call):
        y, hT, st, ck = _forward(call, u, delta, A, Bg, Cg, D, z, bias, h0, ov_val, ck_every=call.plan.T_bwd)
        ctx.save_for_backward(u, delta, A, Bg, Cg, D, z, bias, h0, ov_val, ck)
        ctx.call = call
        ctx.set_materialize_grads(False)
        return y, hT, st

    @staticmethod
    def backward(ctx, dy, dhT, dst):
        u, delta, A, Bg, Cg, D, z, bias, h0, ov_val, ck = ctx.saved_tensors
        call = ctx.call
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        if dst is not None:
            dst = _aligned(dst.float().contiguous())
        if dhT is not None:
            dhT = _aligned(dhT.float().contiguous())
        p = call.plan

        def launch(n_seg, seg_len):
            bp = replace(p, BD=p.BD_bwd, n_seg=n_seg, seg_len=seg_len)
            return call.bwd.scan_bwd(u, delta, A, Bg, Cg, D, z, bias, call.softplus, h0, call.sidx, call.n_st,
                                     ov_val, call.ovidx, ck, dy, dhT, dst, bp)

        segs = (p.n_seg_bwd, p.seg_len_bwd)
        if _tunable(u):
            flags = (call.softplus, D is not None, z is not None, bias is not None, h0 is not None,
                     dhT is not None, dst is not None, ov_val is not None)
            units = Bg.shape[2] * u.shape[0] * math.ceil((u.shape[2] // Bg.shape[2]) / p.BD_bwd)
            segs = _tune_segments(_key("bwd", u, delta, Bg, A, flags), u.shape[1], p.T_bwd, units, launch)
        du, ddl, dz, dA, dB, dC, dD, dbias, dh0, dov = launch(*segs)
        need = ctx.needs_input_grad
        return (
            du if need[0] else None,
            ddl if need[1] else None,
            dA if need[2] else None,
            dB.to(Bg.dtype) if need[3] else None,
            dC.to(Cg.dtype) if need[4] else None,
            dD if need[5] else None,
            dz if need[6] else None,
            dbias if need[7] else None,
            dh0.to(h0.dtype) if need[8] else None,
            dov.to(ov_val.dtype) if need[9] else None,
            None,
        )


def _forward(call: _Call, u, delta, A, Bg, Cg, D, z, bias, h0, ov, ck_every: int):
    """The forward launch, with its segment count tuned on CUDA."""
    p = call.plan

    def launch(n_seg, seg_len):
        return call.fwd.scan_fwd(u, delta, A, Bg, Cg, D, z, bias, call.softplus, h0, call.sidx, call.n_st,
                                 ov, call.ovidx, replace(p, n_seg=n_seg, seg_len=seg_len), ck_every=ck_every)

    segs = (p.n_seg, p.seg_len)
    if _tunable(u):
        flags = (call.softplus, D is not None, z is not None, bias is not None, h0 is not None,
                 call.sidx is not None, ov is not None, ck_every)
        units = Bg.shape[2] * u.shape[0] * math.ceil((u.shape[2] // Bg.shape[2]) / p.BD)
        segs = _tune_segments(_key("fwd", u, delta, Bg, A, flags), u.shape[1], p.T, units, launch)
    return launch(*segs)


def _aligned(t: Tensor | None) -> Tensor | None:
    """t itself if its data starts on a 16-byte boundary, else a copy: the kernels move
    state rows, B and C rows as 16-byte vectors (a view into a larger tensor may start
    anywhere)."""
    return t if t is None or t.data_ptr() % 16 == 0 else t.clone()


def _index_map(positions: Tensor | None, L: int, device) -> Tensor | None:
    """Positions [P] -> int32 [L] holding each position's slot, -1 elsewhere."""
    if positions is None:
        return None
    m = torch.full((L,), -1, dtype=torch.int32, device=device)
    m[positions.to(device)] = torch.arange(positions.numel(), dtype=torch.int32, device=device)
    return m


def selective_scan_triton(
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
    """Same arguments and returns as ``selective_scan_reference``: (y ``[b, L, d]`` in
    u's dtype, final state ``[b, d, n]`` fp32, states ``[b, P, d, n]`` fp32 or None).
    Differentiable in every tensor argument."""
    b, L, d = u.shape
    n = A.shape[1]
    fwd, bwd = _modules(interpret=not u.is_cuda)
    # Canonical forms, through differentiable ops so autograd maps the grads back.
    # B, C in fp32: they are small ([b, L, g, n]), and every thread of the kernels reads
    # every row of them: converting them there cost ~50 instructions a step, and fp32
    # rows measured faster (benchmarks/NOTES_scan.md, v6).
    Bg = _aligned((B.unsqueeze(2) if B.ndim == 3 else B).float().contiguous())
    Cg = _aligned((C.unsqueeze(2) if C.ndim == 3 else C).float().contiguous())
    g = Bg.shape[2]
    u_, delta_ = u.contiguous(), delta.contiguous()
    z_ = z.contiguous() if z is not None else None
    A_ = _aligned(A.float().contiguous())
    # Without gradients D and the Δ bias go in as they are (the kernels convert them on
    # load): two launches a call fewer, which the host pays on every model layer. With
    # gradients, fp32 copies, so that the kernels' fp32 gradients map back through them.
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (u, delta, A, B, C, D, z, delta_bias, initial_state, override_values))
    D_ = (D.float() if needs_grad else D).contiguous() if D is not None else None
    bias_ = (delta_bias.float() if needs_grad else delta_bias).contiguous() if delta_bias is not None else None
    h0 = _aligned(initial_state.float().contiguous()) if initial_state is not None else None
    ov = _aligned(override_values.float().contiguous()) if override_values is not None else None
    sidx = _index_map(state_positions, L, u.device)
    ovidx = _index_map(override_positions, L, u.device)
    n_st = state_positions.numel() if state_positions is not None else 0
    p = plan(b, L, d, n, g, u.device)

    tensors = (u_, delta_, A_, Bg, Cg, D_, z_, bias_, h0, ov)
    call = _Call(delta_softplus, sidx, n_st, ovidx, p, fwd, bwd)
    if needs_grad:
        y, hT, st = _ScanFunction.apply(*tensors, call)
        return y, hT, st
    y, hT, st, _ = _forward(call, *tensors, ck_every=0)
    return y, hT, st
