"""Normalization layers shared by the models, hooked as TransformerLens' are.

Each norm module carries two hook points, named and shaped as in TransformerLens:

- ``hook_scale`` ``[b, pos, 1]``: the divisor, sqrt(mean(x²) + ε) for RMSNorm and
  sqrt(var(x) + ε) for LayerNorm (``ActivationCache.apply_ln_to_stack`` divides by it);
- ``hook_normalized`` ``[b, pos, d]``: RMSNorm: x / scale, *before* the weight;
  LayerNorm: the output, *after* weight and bias (TransformerLens' own convention for
  each kind).

So ``blocks.{l}.norm.hook_scale`` (Mamba, MoE-Mamba), ``blocks.{l}.ln1.hook_scale``
(Transformer, B'MOJO) and ``ln_final.hook_scale`` exist on every model
(``ssmlens.interp.hook_names.TL_NORMS`` maps TransformerLens' names to ours).

Nothing listening (the common case) runs today's fused arithmetic with no hook
overhead. When a hook listens, the explicit formula runs with the hooks in it, so
edits of the scale or the normalized value propagate and gradients reach the hooks;
while the hooks change nothing its value is the fast path's, bit for bit (a cached
run and a plain run agree exactly, which resumed patching relies on). A fused
kernel that folds a norm into its neighbour (add + norm) must call the module
instead when ``norm.hooked`` is true.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ssmlens.interp.hooks import HookPoint


def _value_of(fast: Tensor, explicit: Tensor) -> Tensor:
    """``fast``'s value with ``explicit``'s gradient (they differ by rounding only)."""
    if not (torch.is_grad_enabled() and explicit.requires_grad):
        return fast
    return fast.detach() + (explicit - explicit.detach())  # the bracket is exactly 0


class _HookedNorm:
    """The hook points and the fast-path test shared by both norms (an nn.Module mixin)."""

    _modules: dict

    def _add_hooks(self) -> None:
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    @property
    def hooked(self) -> bool:
        """Whether anything (TransformerLens or torch hooks, nnsight) may see or edit
        this norm's scale or normalized value: then the module must run itself."""
        hooks = self._modules  # not self.hook_*: nn.Module's __getattr__ costs a µs per norm call
        return not (hooks["hook_scale"]._untouched() and hooks["hook_normalized"]._untouched())

    def _scale_through_hook(self, scale: Float[Tensor, "... 1"]) -> tuple[Tensor, bool]:
        """(hooked scale, whether a hook changed it). The hook gets a copy, so an edit
        in place is seen as an edit."""
        hooked = self.hook_scale(scale.clone())
        return hooked, not torch.equal(hooked, scale)


class RMSNorm(_HookedNorm, nn.Module):
    """RMSNorm as in mamba_ssm and Hugging Face's MambaRMSNorm (computed in fp32):
    scale = sqrt(mean(x²) + ε) (``hook_scale``), x / scale (``hook_normalized``), · weight."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self._add_hooks()

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        dtype = x.dtype
        x32, ms, fast = self._fast(x)
        if not self.hooked:
            return self.weight * fast
        scale, edited = self._scale_through_hook(ms.sqrt())
        explicit = (x32 / scale).to(dtype)
        normalized = self.hook_normalized(explicit if edited else _value_of(fast, explicit))
        return self.weight * normalized

    def _fast(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x in fp32, mean(x²) + ε, x / scale in x's dtype): the fast path's parts."""
        x32 = x.float()
        ms = x32.pow(2).mean(-1, keepdim=True) + self.eps
        return x32, ms, (x32 * torch.rsqrt(ms)).to(x.dtype)

    def unhooked(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The output without the hook points (values no hook may see: the unpatched
        past a resumed forward rebuilds)."""
        return self.weight * self._fast(x)[2]


class LayerNorm(_HookedNorm, nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and fused kernel) with TransformerLens' hooks:
    centered x; scale = sqrt(var + ε) (``hook_scale``); centered / scale · weight + bias
    (``hook_normalized``, the output)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__(d, eps=eps)
        self._add_hooks()

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        fast = self.unhooked(x)
        if not self.hooked:
            return fast
        centered = x - x.mean(-1, keepdim=True)
        scale, edited = self._scale_through_hook((centered.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        explicit = centered / scale
        if self.weight is not None:
            explicit = explicit * self.weight
        if self.bias is not None:
            explicit = explicit + self.bias
        return self.hook_normalized(explicit if edited else _value_of(fast, explicit))

    def unhooked(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The output without the hook points (``RMSNorm.unhooked``)."""
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def make_norm(kind: str, d: int, eps: float = 1e-5) -> nn.Module:
    """``"rms"`` -> RMSNorm, ``"layer"`` -> LayerNorm (both hooked)."""
    if kind == "rms":
        return RMSNorm(d, eps)
    if kind == "layer":
        return LayerNorm(d, eps)
    raise ValueError(f"norm must be 'rms' or 'layer', got {kind!r}")
