"""Hyena (Poli et al. 2023, "Hyena Hierarchy"), one operator of order N per block,
fully hooked.

For the block input u ``[b, L, d_model]`` (the Hyena recurrence of the paper; zoology's
and safari's ``Hyena`` is the order-2 case with h¹ = identity):

1. projections p = W_in u ``[b, L, (N + 1)·d]``
2. short causal depthwise convolution (kernel ``d_conv``): c = conv_K(p)
3. split c into x¹, …, x^N, v  (each ``[b, L, d]``)
4. implicit long filters h¹ … h^N ``[N, d, L]`` (``hyena_filter.HyenaFilter``)
5. z¹ = v;  for n = 1 … N:  c^n = h^n * z^n + β^n ⊙ z^n  (causal convolution by FFT),
   z^{n+1} = x^n ⊙ c^n
6. out = W_out z^{N+1}

Hooks (``blocks.{l}.mixer.``): ``hook_x`` (p) and ``hook_conv`` (c) ``[b, pos, (N+1)·d]``,
``hook_x1`` … ``hook_x{N}``, ``hook_v`` ``[b, pos, d]``, ``hook_filter`` ``[N, d, L]`` (no
batch axis: the filters do not depend on the input; an edit changes the convolutions),
``hook_conv_out_1`` … ``hook_conv_out_{N}`` (c^n, before its gate) ``[b, pos, d]``,
``hook_out``. ``conv_kernels(L)`` returns the long convolutions as kernels (lag 0
including β), for token-mixing matrices: per channel the operator is
z^{N+1} = diag(x^N) T_N ⋯ diag(x^1) T_1 v, T_n the causal Toeplitz matrix of h^n
(``ssmlens.kernels.causal_toeplitz``), the gates from ``hook_x{n}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from einops import rearrange
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.kernels.fft_conv import fft_causal_conv
from ssmlens.models.hyena_filter import HyenaFilter
from ssmlens.models.zoo_block import ZooConfig, ZooLM


@dataclass(kw_only=True)
class HyenaConfig(ZooConfig):
    order: int = 2  # N: gates and long filters
    # Longest sequence; the filters' positional features are scaled to it, so set it near
    # the task's length (zoology sets l_max = the input length).
    l_max: int = 256
    d_conv: int = 3  # short filter (zoology: short_filter_order 3)
    filter_width: int = 64  # width of the filter MLP (zoology: filter_order 64)
    filter_emb_dim: int = 3  # positional features: time + (emb_dim − 1)/2 cosine/sine bands
    filter_inner_mlps: int = 2
    filter_sin_freq: float = 1.0
    fast_decay_pct: float = 0.3
    slow_decay_pct: float = 1.5
    decay_target: float = 1e-2

    def check(self) -> None:
        for name in ("order", "l_max", "d_conv", "filter_width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.filter_inner_mlps) < 0:
            raise ValueError(f"filter_inner_mlps must be >= 0, got {self.filter_inner_mlps}")
        if int(self.filter_emb_dim) < 3 or self.filter_emb_dim % 2 == 0:
            raise ValueError(f"filter_emb_dim must be odd and >= 3, got {self.filter_emb_dim}")


class HyenaMixer(nn.Module):
    conv_activation = "identity"  # the short filter has no activation (probes.ablation_structural)

    def __init__(self, cfg: HyenaConfig, layer: int = 0):
        super().__init__()
        self.cfg = cfg
        d, N = cfg.d_model, cfg.order
        width = (N + 1) * d
        self.in_proj = nn.Linear(d, width)
        self.conv1d = nn.Conv1d(width, width, cfg.d_conv, groups=width, padding=cfg.d_conv - 1)
        self.filter = HyenaFilter(d, N, cfg.l_max, cfg.filter_emb_dim, cfg.filter_width, cfg.filter_inner_mlps,
                                  cfg.filter_sin_freq, cfg.fast_decay_pct, cfg.slow_decay_pct, cfg.decay_target)
        self.out_proj = nn.Linear(d, d)
        names = ["x", "conv", "v", "filter", "out"] + [f"x{n}" for n in range(1, N + 1)]
        names += [f"conv_out_{n}" for n in range(1, N + 1)]
        for name in names:
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, u: Tensor) -> Tensor:
        """u ``[b, L, d_model]`` -> ``[b, L, d_model]`` (steps 1–6 of the module docstring)."""
        L, N = u.shape[1], self.cfg.order
        # 1. projections
        p = self.hook_x(self.in_proj(u))
        # 2. short convolution
        c = self.hook_conv(rearrange(self.conv1d(rearrange(p, "b l w -> b w l"))[..., :L], "b w l -> b l w"))
        # 3. gates and value
        *xs, v = c.split(self.cfg.d_model, dim=-1)
        xs = [getattr(self, f"hook_x{n}")(x) for n, x in enumerate(xs, start=1)]
        v = self.hook_v(v)
        # 4. implicit long filters
        h = self.hook_filter(self.filter.filters(L))
        # 5. the Hyena recurrence: long convolution, then gate
        z = v
        for n in range(1, N + 1):
            conv = fft_causal_conv(z, h[n - 1]) + self.filter.bias[n - 1] * z
            z = xs[n - 1] * getattr(self, f"hook_conv_out_{n}")(conv)
        # 6. output projection
        return self.hook_out(self.out_proj(z))

    def conv_kernels(self, L: int) -> dict[str, Tensor]:
        """The long convolutions as causal kernels ``{"h1": [d, L], …}``, lag 0 including
        the skip β (``ssmlens.kernels.fft_conv.causal_toeplitz`` makes them matrices).
        These are the model's own filters: an edit of ``hook_filter`` is not in them."""
        h = self.filter.filters(L).clone()
        h[:, :, 0] = h[:, :, 0] + self.filter.bias
        return {f"h{n}": h[n - 1] for n in range(1, self.cfg.order + 1)}


class Hyena(ZooLM):
    model_type = "hyena"
    config_class = HyenaConfig
    mixer_class = HyenaMixer
