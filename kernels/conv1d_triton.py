"""Triton kernel of the depthwise causal conv1d (+ bias + silu) on ``[b, L, d]``.

The layout the projections produce, channels last: a program owns a ``[BL, BD]`` tile
of positions × channels of one sequence and sums its K taps, each a load of the
``[BL, BD]`` tile K − 1 − k positions earlier (rows before 0 read 0: the causal
padding). The taps overlap, so after the first they come from L1/L2: device memory
sees x read once and y written once. Accumulation, bias and silu in fp32, one rounding
at the store. The reference is ``ssmlens.kernels.conv1d.causal_conv1d_reference``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# (positions, channels, warps) of a program's tile; benchmarks/model_gpu.py --conv-sweep
# times the alternatives.
BLOCK = (32, 128, 4)


@triton.jit
def _causal_conv1d_kernel(x_ptr, w_ptr, b_ptr, y_ptr, L, d, sx_b, sx_l,
                          K: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
                          HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """Grid (cdiv(L, BL), cdiv(d, BD), b). x ``[b, L, d]`` with strides (sx_b, sx_l, 1);
    w ``[d, K]`` contiguous; y ``[b, L, d]`` contiguous."""
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    t = pid_l * BL + tl.arange(0, BL)
    c = pid_d * BD + tl.arange(0, BD)
    cm = c < d
    acc = tl.zeros([BL, BD], dtype=tl.float32)
    x_base = x_ptr + pid_b * sx_b
    for k in tl.static_range(K):
        tk = t - (K - 1) + k  # tap k reads position t − (K − 1 − k)
        m = ((tk >= 0) & (tk < L))[:, None] & cm[None, :]
        xv = tl.load(x_base + tk[:, None] * sx_l + c[None, :], mask=m, other=0.0).to(tl.float32)
        wk = tl.load(w_ptr + c * K + k, mask=cm, other=0.0).to(tl.float32)
        acc += xv * wk[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    y_off = (pid_b * L + t)[:, None] * d + c[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=(t < L)[:, None] & cm[None, :])


def causal_conv1d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         silu: bool) -> torch.Tensor:
    """Launch: x ``[b, L, d]`` (channels at unit stride), weight ``[d, K]``, bias ``[d]``
    or None -> y ``[b, L, d]`` contiguous, x's dtype."""
    b, L, d = x.shape
    if x.stride(2) != 1:
        x = x.contiguous()
    w = weight.contiguous()
    y = torch.empty(b, L, d, device=x.device, dtype=x.dtype)
    BL, BD, warps = BLOCK
    grid = (triton.cdiv(L, BL), triton.cdiv(d, BD), b)
    _causal_conv1d_kernel[grid](x, w, bias if bias is not None else w, y, L, d, x.stride(0), x.stride(1),
                                K=w.shape[1], BL=BL, BD=BD, HAS_BIAS=bias is not None, SILU=silu, num_warps=warps)
    return y
