"""Triton kernel of RMSNorm over the last axis: one pass, one program per row.

The arithmetic of ``ssmlens.models.norm.RMSNorm`` (mamba_ssm's and Hugging Face's):
x/rms(x) in fp32, rounded to x's dtype, times the weight, rounded to the promoted
dtype of x and the weight. The torch module takes ~8 elementwise passes over the
activations (an fp32 copy, pow, mean, ...); this reads x once and writes y once.
The reference is ``ssmlens.kernels.norm.rms_norm_reference``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, D, sx, eps, BLOCK: tl.constexpr):
    """Grid (rows,). x rows at stride sx (unit stride along D); y contiguous."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    m = c < D
    x = tl.load(x_ptr + row * sx + c, mask=m, other=0.0)
    x32 = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / D + eps)
    xn = (x32 * inv).to(x.dtype).to(tl.float32)  # the module rounds to x's dtype before the weight
    w = tl.load(w_ptr + c, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * D + c, (w * xn).to(y_ptr.dtype.element_ty), mask=m)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Launch: x ``[..., D]``, weight ``[D]`` -> y ``[..., D]`` contiguous in the dtype
    torch promotes x and the weight to."""
    D = x.shape[-1]
    x2 = x.reshape(-1, D)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape, device=x.device, dtype=torch.promote_types(x.dtype, weight.dtype))
    BLOCK = triton.next_power_of_2(D)
    _rms_norm_kernel[(x2.shape[0],)](x2, weight.contiguous(), y, D, x2.stride(0), float(eps), BLOCK=BLOCK,
                                     num_warps=4 if BLOCK <= 2048 else 8)
    return y.view(x.shape)
