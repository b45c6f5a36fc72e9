"""Normalization layers shared by the models."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


class RMSNorm(nn.Module):
    """RMSNorm as in mamba_ssm and Hugging Face's MambaRMSNorm (computed in fp32)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def make_norm(kind: str, d: int, eps: float = 1e-5) -> nn.Module:
    """``"rms"`` -> RMSNorm, ``"layer"`` -> LayerNorm."""
    if kind == "rms":
        return RMSNorm(d, eps)
    if kind == "layer":
        return nn.LayerNorm(d, eps=eps)
    raise ValueError(f"norm must be 'rms' or 'layer', got {kind!r}")
