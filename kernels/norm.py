"""RMSNorm over the last axis as one fused op, beside its torch reference.

``rms_norm(x, weight, eps)`` = weight · (x / sqrt(mean(x²) + eps)), the normalization
in fp32 and rounded to x's dtype before the weight, exactly the arithmetic of
``ssmlens.models.norm.RMSNorm``. Backends: ``triton`` (``norm_triton.py``, one pass; CPU
tensors only under ``TRITON_INTERPRET=1``) and ``reference`` (torch ops). ``auto``
takes Triton on CUDA when no gradient is needed (the kernel has no backward).
"""

from __future__ import annotations

import os

import torch
from jaxtyping import Float
from torch import Tensor


def rms_norm_reference(x: Float[Tensor, "... D"], weight: Float[Tensor, "D"], eps: float) -> Float[Tensor, "... D"]:
    """RMSNorm in torch ops (differentiable)."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rms_norm(x: Float[Tensor, "... D"], weight: Float[Tensor, "D"], eps: float,
             backend: str = "auto") -> Float[Tensor, "... D"]:
    """RMSNorm of x ``[..., D]`` with weight ``[D]``; ``backend``: "auto", "triton",
    "reference"."""
    if weight.ndim != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rms_norm: weight must be [{x.shape[-1]}] for x {tuple(x.shape)}, got {tuple(weight.shape)}")
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if backend == "auto":
        backend = "triton" if x.is_cuda and not needs_grad else "reference"
    if backend == "reference":
        return rms_norm_reference(x, weight, eps)
    if backend != "triton":
        raise ValueError(f"rms_norm: unknown backend {backend!r}; choose 'auto', 'triton' or 'reference'")
    if needs_grad:
        raise ValueError("rms_norm: the triton backend has no backward; use 'auto' or 'reference' with gradients")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("rms_norm: backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 on the CPU")
    from ssmlens.kernels.triton_loader import kernel_modules

    (mod,) = kernel_modules(("norm_triton",), interpret=not x.is_cuda)
    return mod.rms_norm_triton(x, weight, eps)
