"""GELU feed-forward layer with hooks on its hidden pre/post activations and output.

``act_fn``: ``"gelu"`` (exact, erf; Pythia) or ``"gelu_new"`` (the tanh approximation of
GPT-2, transformers' ``NewGELUActivation``)."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssmlens.interp.hooks import HookPoint


ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh"}  # name -> F.gelu's ``approximate``


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, bias: bool = True, act_fn: str = "gelu"):
        super().__init__()
        if act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn must be one of {sorted(ACTIVATIONS)}, got {act_fn!r}")
        self.approximate = ACTIVATIONS[act_fn]
        self.W_in = nn.Linear(d_model, d_mlp, bias=bias)
        self.W_out = nn.Linear(d_mlp, d_model, bias=bias)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        """x ``[b, pos, d_model]`` -> ``[b, pos, d_model]``."""
        h = self.hook_post(F.gelu(self.hook_pre(self.W_in(x)), approximate=self.approximate))
        return self.hook_out(self.W_out(h))
