"""Public selective-scan API (DESIGN §3): argument checks and backend dispatch.

``selective_scan(...)`` checks every argument once, normalizes the state options
(``"all"`` -> every position; positions -> a sorted-free LongTensor in the caller's
order) and hands the same normalized call to one backend:

- ``reference``: float64 sequential loop (tests),
- ``torch``: chunked vectorized fp32 (the CPU default),
- ``triton``: fused GPU kernel (``kernels/triton_scan.py``), picked by ``auto`` on CUDA
  when importable; on the CPU only under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ssmlens.kernels.reference import selective_scan_reference
from ssmlens.kernels.torch_scan import selective_scan_torch

BACKENDS = ("auto", "triton", "torch", "reference")


class ScanResult(NamedTuple):
    out: Tensor  # [b, L, d] in the input dtype
    final_state: Tensor | None  # [b, d, n] fp32
    states: Tensor | None  # [b, P, d, n] fp32


class ScanInputError(ValueError):
    """A selective_scan argument with the wrong shape, dtype, device or value."""


def _triton_backend() -> Callable | None:
    try:
        from ssmlens.kernels.triton_scan import selective_scan_triton
    except ImportError:
        return None
    return selective_scan_triton


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ScanInputError(f"selective_scan: {msg}")


def _positions(name: str, pos, L: int, device) -> Tensor:
    """Positions (list, range or 1-D int tensor; possibly empty) -> int64 tensor, validated in
    [-L, L); bool masks are refused."""
    t = torch.as_tensor(pos if not isinstance(pos, range) else list(pos), device="cpu")
    # A bool mask would otherwise be read as the indices 0 and 1.
    _check(t.dtype != torch.bool, f"{name} must be integer positions, got a bool tensor (a mask? "
                                  "pass mask.nonzero().flatten())")
    _check(t.ndim == 1, f"{name} must be 1-D, got shape {_shape(t)}")
    _check(t.numel() == 0 or not t.is_floating_point(), f"{name} must be integers, got {t.dtype}")
    t = t.long()
    _check(bool(((t >= -L) & (t < L)).all()), f"{name} {t.tolist()} out of range for L={L}")
    t = torch.where(t < 0, t + L, t)
    _check(t.unique().numel() == t.numel(), f"{name} has repeated positions: {t.tolist()}")
    return t.to(device)


def _validate(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        _check(isinstance(t, Tensor), f"{name} must be a tensor, got {type(t).__name__}")
        _check(t.is_floating_point(), f"{name} must be floating point, got {t.dtype}")
    _check(u.ndim == 3, f"u must be [batch, L, d], got shape {_shape(u)}")
    b, L, d = u.shape
    _check(L >= 1, "u has L=0 positions")
    _check(_shape(delta) == (b, L, d), f"delta must be {(b, L, d)} like u, got {_shape(delta)}")
    _check(A.ndim == 2 and A.shape[0] == d, f"A must be [d={d}, n], got {_shape(A)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.ndim == 3:
            _check(_shape(t) == (b, L, n), f"{name} must be {(b, L, n)} or [b, L, g, n], got {_shape(t)}")
        else:
            _check(t.ndim == 4 and t.shape[:2] == (b, L) and t.shape[3] == n,
                   f"{name} must be {(b, L, n)} or grouped [b, L, g, {n}], got {_shape(t)}")
            _check(d % t.shape[2] == 0, f"{name} has {t.shape[2]} groups, which do not divide d={d}")
    _check(B.ndim == C.ndim and (B.ndim == 3 or B.shape[2] == C.shape[2]),
           f"B {_shape(B)} and C {_shape(C)} must be grouped alike")
    for name, t, shape in (("D", D, (d,)), ("delta_bias", delta_bias, (d,)), ("z", z, (b, L, d)),
                           ("initial_state", initial_state, (b, d, n))):
        if t is not None:
            _check(isinstance(t, Tensor) and _shape(t) == shape,
                   f"{name} must be {shape}, got {_shape(t) if isinstance(t, Tensor) else type(t).__name__}")
            _check(t.is_floating_point(), f"{name} must be floating point, got {t.dtype}")
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias), ("initial_state", initial_state)):
        if t is not None:
            _check(t.device == u.device, f"{name} is on {t.device} but u is on {u.device}")


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    state_positions: str | Sequence[int] | Tensor | None = None,
    state_override: tuple[Sequence[int] | Tensor, Tensor] | None = None,
    backend: str = "auto",
) -> ScanResult:
    """Mamba-1 selective scan with hidden states on demand and state overrides.

    Shapes: u, delta, z ``[b, L, d]``; A ``[d, n]``; B, C ``[b, L, n]`` or grouped
    ``[b, L, g, n]``; D, delta_bias ``[d]``; initial_state ``[b, d, n]``.
    ``state_positions``: None, ``"all"`` or positions -> ``states [b, P, d, n]`` fp32.
    ``state_override=(positions [P], values [b, P, d, n])``: h is replaced there and
    later states evolve from it. Returns ``ScanResult(out, final_state, states)``.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias, initial_state)
    b, L, d = u.shape
    n = A.shape[1]

    if state_positions is None:
        pos = None
    elif isinstance(state_positions, str):
        _check(state_positions == "all", f"state_positions must be None, 'all' or positions, got {state_positions!r}")
        pos = torch.arange(L, device=u.device)
    else:
        pos = _positions("state_positions", state_positions, L, u.device)

    ov_pos = ov_val = None
    if state_override is not None:
        _check(isinstance(state_override, (tuple, list)) and len(state_override) == 2,
               "state_override must be a (positions, values) pair")
        ov_pos = _positions("state_override positions", state_override[0], L, u.device)
        ov_val = state_override[1]
        P = ov_pos.numel()
        _check(isinstance(ov_val, Tensor) and _shape(ov_val) == (b, P, d, n),
               f"state_override values must be {(b, P, d, n)}, got "
               f"{_shape(ov_val) if isinstance(ov_val, Tensor) else type(ov_val).__name__}")
        _check(ov_val.device == u.device, f"state_override values are on {ov_val.device}, u on {u.device}")

    if backend not in BACKENDS:
        raise ScanInputError(f"selective_scan: unknown backend {backend!r}; choose one of {BACKENDS}")
    fn = None
    if backend == "auto":
        fn = _triton_backend() if u.is_cuda else None
        fn = fn or selective_scan_torch
    elif backend == "torch":
        fn = selective_scan_torch
    elif backend == "reference":
        fn = selective_scan_reference
    else:
        fn = _triton_backend()
        if fn is None:
            raise ScanInputError("selective_scan: the triton backend is not available (kernels.triton_scan missing)")
        if not u.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ScanInputError("selective_scan: backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 on the CPU")

    y, final, states = fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                          initial_state, pos, ov_pos, ov_val)
    return ScanResult(
        out=y.to(u.dtype),
        final_state=final.float() if return_final_state else None,
        states=states.float() if states is not None else None,
    )
