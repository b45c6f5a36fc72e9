"""Depthwise causal conv1d (+ bias, + silu) of the Mamba mixer, on ``[b, L, d]``.

``causal_conv1d(x, weight, bias, silu)`` computes, for each channel c,

    y[:, t, c] = silu( Σ_k weight[c, k] · x[:, t − (K − 1) + k, c] + bias[c] )

with x = 0 before position 0 (mamba_ssm's causal conv). Backends: ``triton``
(``conv1d_triton.py``: one pass over the layout the projections produce, fp32
accumulation; CPU tensors only under ``TRITON_INTERPRET=1``) and ``reference``
(``torch.nn.functional.conv1d`` on ``[b, d, L]`` with K − 1 zeros of padding, the
mixer's original code). ``auto`` takes Triton on CUDA when no gradient is needed
(the kernel has no backward), the reference otherwise.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor


def causal_conv1d_reference(x: Float[Tensor, "b L d"], weight: Float[Tensor, "d K"], bias: Float[Tensor, "d"] | None,
                            silu: bool = True) -> Float[Tensor, "b L d"]:
    """The conv as ``nn.Conv1d(d, d, K, groups=d, padding=K − 1)`` computes it, cut to
    the first L positions, in x's dtype; differentiable."""
    L, K = x.shape[1], weight.shape[1]
    y = F.conv1d(rearrange(x, "b l d -> b d l"), weight[:, None, :], bias, padding=K - 1, groups=x.shape[2])[..., :L]
    if silu:
        y = F.silu(y)
    return rearrange(y, "b d l -> b l d")


def _needs_grad(*ts: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def causal_conv1d(x: Float[Tensor, "b L d"], weight: Float[Tensor, "d K"], bias: Float[Tensor, "d"] | None = None,
                  silu: bool = True, backend: str = "auto") -> Float[Tensor, "b L d"]:
    """Causal depthwise conv of x ``[b, L, d]`` with weight ``[d, K]`` (+ bias ``[d]``,
    + silu) -> ``[b, L, d]`` in x's dtype. ``backend``: "auto", "triton", "reference"."""
    if x.ndim != 3 or weight.ndim != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f"causal_conv1d: x must be [b, L, d] and weight [d, K], got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[2],):
        raise ValueError(f"causal_conv1d: bias must be [{x.shape[2]}], got {tuple(bias.shape)}")
    if backend == "auto":
        backend = "triton" if x.is_cuda and not _needs_grad(x, weight, bias) else "reference"
    if backend == "reference":
        return causal_conv1d_reference(x, weight, bias, silu)
    if backend != "triton":
        raise ValueError(f"causal_conv1d: unknown backend {backend!r}; choose 'auto', 'triton' or 'reference'")
    if _needs_grad(x, weight, bias):
        raise ValueError("causal_conv1d: the triton backend has no backward; use 'auto' or 'reference' with gradients")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("causal_conv1d: backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 on the CPU")
    from ssmlens.kernels.triton_loader import kernel_modules

    (mod,) = kernel_modules(("conv1d_triton",), interpret=not x.is_cuda)
    return mod.causal_conv1d_triton(x, weight, bias, silu)
