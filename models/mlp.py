"""GELU feed-forward layer with hooks on its hidden pre/post activations and output."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssmlens.interp.hooks import HookPoint


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, bias: bool = True):
        super().__init__()
        self.W_in = nn.Linear(d_model, d_mlp, bias=bias)
        self.W_out = nn.Linear(d_mlp, d_model, bias=bias)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        """x ``[b, pos, d_model]`` -> ``[b, pos, d_model]``."""
        h = self.hook_post(F.gelu(self.hook_pre(self.W_in(x))))
        return self.hook_out(self.W_out(h))
