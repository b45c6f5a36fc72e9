"""Hyena's implicit long filters (Poli et al. 2023; zoology's ``Filter``).

Filters are a function of position, not parameters per lag: for lag l = 0 … l_max − 1,

    z(l) = [t_l, cos(2π f_k l / l_max), −sin(2π f_k l / l_max)]_k   t_l = l/(l_max − 1),
           f_k = linspace(1e-4, bands − 1, bands),  emb_dim = 1 + 2·bands
    ĥ(l) = W_out · sin(ω ⊙ (W_2 · sin(ω ⊙ (W_1 · sin(ω ⊙ (W_0 z(l) + b_0)) + b_1)) + b_2))
           (``num_inner_mlps`` inner layers; one trainable frequency ω shared by every sine)
    h_n[c, l] = ĥ(l)[n, c] · exp(−t_l · |δ_c|)      exponential-decay modulation,
           δ_c = linspace(ln(target)/slow_pct, ln(target)/fast_pct) over channels (fixed)

giving ``order`` filters ``[order, d, L]`` (``filters(L)``: the first L lags, so a
prefix sees the same filters as the whole sequence). Each long convolution also has a
skip ``bias`` ``[order, d]`` (its lag-0 term β ⊙ z).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import rearrange
from jaxtyping import Float
from torch import Tensor


class Sin(nn.Module):
    """sin(ω ⊙ x) with a trainable frequency per unit (zoology's ``Sin``)."""

    def __init__(self, dim: int, w: float = 1.0):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


def positional_features(l_max: int, emb_dim: int) -> tuple[Tensor, Tensor]:
    """(z ``[l_max, emb_dim]``, t ``[l_max, 1]``) of the module docstring."""
    if emb_dim < 3 or emb_dim % 2 == 0:
        raise ValueError(f"emb_dim must be odd and >= 3 (time, cosine and sine per band), got {emb_dim}")
    bands = (emb_dim - 1) // 2
    t = torch.linspace(0, 1, l_max)[:, None]
    w = 2 * math.pi * torch.arange(l_max, dtype=torch.float32)[:, None] / l_max
    f = torch.linspace(1e-4, bands - 1, bands)[None, :]
    return torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], dim=-1), t


class HyenaFilter(nn.Module):
    def __init__(self, d_model: int, order: int, l_max: int, emb_dim: int = 3, width: int = 64,
                 num_inner_mlps: int = 2, sin_freq: float = 1.0, fast_decay_pct: float = 0.3,
                 slow_decay_pct: float = 1.5, decay_target: float = 1e-2):
        super().__init__()
        self.order, self.d_model, self.l_max = order, d_model, l_max
        z, t = positional_features(l_max, emb_dim)
        self.register_buffer("z", z, persistent=False)
        self.register_buffer("t", t, persistent=False)
        self.linears = nn.ModuleList([nn.Linear(emb_dim, width)]
                                     + [nn.Linear(width, width) for _ in range(num_inner_mlps)])
        self.act = Sin(width, sin_freq)  # one ω for every layer (zoology shares one Sin module)
        self.out = nn.Linear(width, order * d_model, bias=False)
        decay = torch.linspace(math.log(decay_target) / slow_decay_pct, math.log(decay_target) / fast_decay_pct,
                               d_model)
        self.register_buffer("deltas", decay, persistent=False)
        self.bias = nn.Parameter(torch.randn(order, d_model))
        for p in self.parameters():  # zoology trains the filter without weight decay
            p._no_weight_decay = True

    def mlp(self, z: Float[Tensor, "L emb"]) -> Float[Tensor, "L od"]:
        """ĥ(l) of the module docstring."""
        for linear in self.linears:
            z = self.act(linear(z))
        return self.out(z)

    def filters(self, L: int) -> Float[Tensor, "order d L"]:
        """The first L lags of every filter (positional MLP, then the decay)."""
        if L > self.l_max:
            raise ValueError(f"sequence of {L} positions exceeds Hyena's l_max={self.l_max}: its implicit "
                             "filters are defined on l_max lags (set model_config l_max)")
        h = rearrange(self.mlp(self.z[:L]), "l (o d) -> o d l", o=self.order)
        modulation = torch.exp(-self.t[:L, 0] * self.deltas.abs()[:, None])  # d L
        return h * modulation
