"""Structural ablations: named removals of model components, as forward hooks.

Definitions (``layers`` = None: every layer that has the component):

- ``no_conv``: the short causal conv sees only the current position. Mode
  ``last_tap`` (default): ``hook_conv`` := silu(w[:, K−1] · x_t + b), the conv kernel
  reduced to its last tap (the one that multiplies x_t), bias kept; mode
  ``identity``: ``hook_conv`` := silu(x_t). x_t is ``hook_x`` of the same forward.
  Mixers whose conv has no activation (``conv_activation = "identity"``: Based's
  BaseConv, Hyena's short filter) get the same without the silu. Mamba-2's one conv
  runs over x, B and C together: all three are reduced (``hook_conv``, ``hook_B``,
  ``hook_C`` from the mixer's pre-conv input, recomputed from ``hook_resid_pre``), as
  Mamba-1's B and C lose the conv through u.
- ``clamp_delta``: ``hook_delta`` := a constant: a given value, or by default
  softplus(dt_proj.bias) per channel (the Δ of a zero input: selectivity removed).
- ``freeze_delta``: ``hook_delta`` := its mean over positions, per sequence and
  channel (Δ no longer varies along the sequence; the mean uses future positions).
- ``no_memory``: B'MOJO's ``memory.hook_write`` := 0, so the eidetic memory stays
  empty (attention sees only its window and the fading token).
- ``no_fading``: B'MOJO's fading column is removed from the attention softmax: in
  ``attn.hook_pattern`` the last column is set to 0 and each row renormalized, which
  equals a softmax over the remaining keys (rows with nothing else stay 0). The
  innovation test still reads f (only attention loses it).
- ``no_window``: Based's sliding-window attention removed: ``mixer.hook_window_out`` := 0
  (its output projection has no bias, so the window branch contributes nothing).
- ``no_shift``: H3's shift SSM removed: ``mixer.hook_shift_out`` := k (``hook_k`` of the
  same forward), so kv_t = k_t ⊗ v_t.
- ``truncate_filter[:T]``: Hyena's long filters cut to their first T lags:
  ``mixer.hook_filter`` := h ⊙ [lag < T] (T default: the short filter's ``d_conv``); the
  lag-0 skip β is kept.
- ``drop_head:{l}.{h}``: head h of ``blocks.{l}.attn.hook_z`` := 0.
- ``drop_expert:{l}.{e}``: in ``blocks.{l}.moe.hook_expert`` tokens routed to e get −1,
  so they pass through the residual only (``ssmlens.models.moe``'s convention).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmlens.probes.ablation_base import Ablation, AblationError, Hooks, NotApplicable, _fmt


def _layers_with(model, suffix: str, layers, what: str) -> list[int]:
    """Layers that have ``blocks.{l}.{suffix}``; NotApplicable if none (or a named one lacks it)."""
    pattern = re.compile(r"^blocks\.(\d+)\." + re.escape(suffix) + "$")
    have = sorted(int(m.group(1)) for m in map(pattern.match, model.hook_dict) if m)
    if not have:
        raise NotApplicable(f"{what}: {type(model).__name__} has no {suffix} hook in any layer")
    if layers is None:
        return have
    missing = [l for l in layers if l not in have]
    if missing:
        raise NotApplicable(f"{what}: layer(s) {missing} have no {suffix} (layers with one: {have})")
    return list(layers)


@dataclass
class Structural(Ablation):
    """Shared fields: ``layers`` (None = every layer that has the component)."""

    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.layers is not None:
            if isinstance(self.layers, int):
                self.layers = [self.layers]
            self.layers = [int(l) for l in self.layers]

    def _where(self) -> str:
        return "" if self.layers is None else "@" + _fmt(self.layers)


@dataclass
class NoConv(Structural):
    mode: str = "last_tap"
    name = "no_conv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("last_tap", "identity"):
            raise AblationError(f"no_conv mode must be 'last_tap' or 'identity', got {self.mode!r}")

    @property
    def label(self) -> str:
        return self.name + ("" if self.mode == "last_tap" else f":{self.mode}") + self._where()

    def fwd_hooks(self, model) -> Hooks:
        hooks: Hooks = []
        for l in _layers_with(model, "mixer.hook_conv", self.layers, self.label):
            conv = model.get_submodule(f"blocks.{l}.mixer").conv1d
            if hasattr(model.get_submodule(f"blocks.{l}.mixer"), "conv_dim"):  # Mamba-2: x, B, C in one conv
                hooks += self._xbc_hooks(model, l)
                continue
            seen: dict[str, Tensor] = {}

            def keep_x(x, hook, seen=seen):
                seen["x"] = x
                return x

            mixer = model.get_submodule(f"blocks.{l}.mixer")
            act = F.silu if getattr(mixer, "conv_activation", "silu") == "silu" else (lambda t: t)

            def replace(u, hook, seen=seen, conv=conv, act=act):
                x = seen.pop("x")
                if self.mode == "identity":
                    return act(x).to(u.dtype)
                pre = x * conv.weight[:, 0, -1].to(x.dtype)
                if conv.bias is not None:
                    pre = pre + conv.bias.to(x.dtype)
                return act(pre).to(u.dtype)

            hooks += [(f"blocks.{l}.mixer.hook_x", keep_x), (f"blocks.{l}.mixer.hook_conv", replace)]
        return hooks

    def _xbc_hooks(self, model, l: int) -> Hooks:
        """Mamba-2 (``Mamba2Block``: mixer(norm(resid))): the pre-conv xBC is recomputed
        from the block's input, reduced to the current tap (or left as is, ``identity``),
        then silu; u replaces ``hook_conv`` and B, C replace ``hook_B``/``hook_C``."""
        block = model.get_submodule(f"blocks.{l}")
        mixer = block.mixer
        cfg, conv = mixer.cfg, mixer.conv1d
        seen: dict[str, Tensor] = {}

        def keep_resid(resid, hook):
            seen["resid"] = resid
            return resid

        def replace_u(u, hook):
            _, xbc, _ = mixer.in_proj(block.norm(seen.pop("resid"))).split(
                [cfg.d_inner, mixer.conv_dim, cfg.n_heads], dim=-1)
            if self.mode == "last_tap":
                xbc = xbc * conv.weight[:, 0, -1].to(xbc.dtype)
                if conv.bias is not None:
                    xbc = xbc + conv.bias.to(xbc.dtype)
            x, B, C = F.silu(xbc).split([cfg.d_inner, cfg.n_groups * cfg.d_state, cfg.n_groups * cfg.d_state], -1)
            seen["B"], seen["C"] = (t.unflatten(-1, (cfg.n_groups, cfg.d_state)) for t in (B, C))
            return x.to(u.dtype)

        return [(f"blocks.{l}.hook_resid_pre", keep_resid), (f"blocks.{l}.mixer.hook_conv", replace_u),
                (f"blocks.{l}.mixer.hook_B", lambda b, hook: seen.pop("B").to(b.dtype)),
                (f"blocks.{l}.mixer.hook_C", lambda c, hook: seen.pop("C").to(c.dtype))]


@dataclass
class ClampDelta(Structural):
    value: float | None = None
    name = "clamp_delta"

    @property
    def label(self) -> str:
        return self.name + ("" if self.value is None else f":{self.value:g}") + self._where()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.value is not None:
            self.value = float(self.value)
            if not (self.value >= 0 and math.isfinite(self.value)):
                raise AblationError(f"clamp_delta value must be a finite Δ >= 0, got {self.value}")

    def fwd_hooks(self, model) -> Hooks:
        hooks: Hooks = []
        for l in _layers_with(model, "mixer.hook_delta", self.layers, self.label):
            bias = model.get_submodule(f"blocks.{l}.mixer").dt_proj.bias

            def clamp(delta, hook, bias=bias):
                const = F.softplus(bias.detach()) if self.value is None else torch.tensor(self.value)
                return const.to(delta.device, delta.dtype).expand_as(delta).clone()

            hooks.append((f"blocks.{l}.mixer.hook_delta", clamp))
        return hooks


@dataclass
class FreezeDelta(Structural):
    name = "freeze_delta"

    @property
    def label(self) -> str:
        return self.name + self._where()

    def fwd_hooks(self, model) -> Hooks:
        return [(f"blocks.{l}.mixer.hook_delta", lambda d, hook: d.mean(1, keepdim=True).expand_as(d).clone())
                for l in _layers_with(model, "mixer.hook_delta", self.layers, self.label)]


@dataclass
class NoMemory(Structural):
    name = "no_memory"

    @property
    def label(self) -> str:
        return self.name + self._where()

    def fwd_hooks(self, model) -> Hooks:
        return [(f"blocks.{l}.memory.hook_write", lambda w, hook: torch.zeros_like(w))
                for l in _layers_with(model, "memory.hook_write", self.layers, self.label)]


def _drop_fading(pattern: Tensor, hook) -> Tensor:
    if pattern.shape[-1] != pattern.shape[-2] + 1:
        raise NotApplicable(f"no_fading: {hook.name} has {pattern.shape[-1]} key columns for "
                            f"{pattern.shape[-2]} queries; a B'MOJO pattern has one more (the fading token)")
    kept = torch.cat([pattern[..., :-1], torch.zeros_like(pattern[..., -1:])], dim=-1)
    total = kept.sum(-1, keepdim=True)
    return torch.where(total > 0, kept / total.clamp_min(torch.finfo(kept.dtype).tiny), kept)


@dataclass
class NoFading(Structural):
    name = "no_fading"

    @property
    def label(self) -> str:
        return self.name + self._where()

    def fwd_hooks(self, model) -> Hooks:
        layers = _layers_with(model, "memory.hook_fading", self.layers, self.label)
        layers = _layers_with(model, "attn.hook_pattern", layers, self.label)
        return [(f"blocks.{l}.attn.hook_pattern", _drop_fading) for l in layers]


@dataclass
class NoWindow(Structural):
    name = "no_window"

    @property
    def label(self) -> str:
        return self.name + self._where()

    def fwd_hooks(self, model) -> Hooks:
        return [(f"blocks.{l}.mixer.hook_window_out", lambda w, hook: torch.zeros_like(w))
                for l in _layers_with(model, "mixer.hook_window_out", self.layers, self.label)]


@dataclass
class NoShift(Structural):
    name = "no_shift"

    @property
    def label(self) -> str:
        return self.name + self._where()

    def fwd_hooks(self, model) -> Hooks:
        hooks: Hooks = []
        for l in _layers_with(model, "mixer.hook_shift_out", self.layers, self.label):
            seen: dict[str, Tensor] = {}

            def keep_k(k, hook, seen=seen):
                seen["k"] = k
                return k

            hooks += [(f"blocks.{l}.mixer.hook_k", keep_k),
                      (f"blocks.{l}.mixer.hook_shift_out", lambda out, hook, seen=seen: seen.pop("k").to(out.dtype))]
        return hooks


@dataclass
class TruncateFilter(Structural):
    length: int | None = None
    name = "truncate_filter"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.length is not None:
            if isinstance(self.length, str) and not self.length.strip().isdigit():
                raise AblationError(f"truncate_filter takes a number of lags, got {self.length!r}")
            self.length = int(self.length)
            if self.length < 1:
                raise AblationError(f"truncate_filter keeps at least 1 lag, got {self.length}")

    @property
    def label(self) -> str:
        return self.name + ("" if self.length is None else f":{self.length}") + self._where()

    def fwd_hooks(self, model) -> Hooks:
        hooks: Hooks = []
        for l in _layers_with(model, "mixer.hook_filter", self.layers, self.label):
            keep = self.length or model.get_submodule(f"blocks.{l}.mixer").cfg.d_conv

            def cut(h, hook, keep=keep):
                return h * (torch.arange(h.shape[-1], device=h.device) < keep).to(h.dtype)

            hooks.append((f"blocks.{l}.mixer.hook_filter", cut))
        return hooks


@dataclass
class DropHead(Ablation):
    layer: int = 0
    head: int = 0
    name = "drop_head"

    @property
    def label(self) -> str:
        return f"{self.name}:{self.layer}.{self.head}"

    def fwd_hooks(self, model) -> Hooks:
        _layers_with(model, "attn.hook_z", [self.layer], self.label)
        n_heads = getattr(model.get_submodule(f"blocks.{self.layer}.attn"), "n_heads", None)
        if n_heads is not None and not 0 <= self.head < n_heads:
            raise AblationError(f"{self.label}: layer {self.layer} has heads 0..{n_heads - 1}")

        def drop(z, hook):
            z = z.clone()
            z[:, :, self.head] = 0
            return z

        return [(f"blocks.{self.layer}.attn.hook_z", drop)]


@dataclass
class DropExpert(Ablation):
    layer: int = 0
    expert: int = 0
    name = "drop_expert"

    @property
    def label(self) -> str:
        return f"{self.name}:{self.layer}.{self.expert}"

    def fwd_hooks(self, model) -> Hooks:
        _layers_with(model, "moe.hook_expert", [self.layer], self.label)
        n = getattr(model.get_submodule(f"blocks.{self.layer}.moe"), "n_experts", None)
        if n is not None and not 0 <= self.expert < n:
            raise AblationError(f"{self.label}: layer {self.layer} has experts 0..{n - 1}")
        return [(f"blocks.{self.layer}.moe.hook_expert", lambda e, hook: e.masked_fill(e == self.expert, -1))]


@dataclass
class NoAblation(Ablation):
    name = "none"

    def fwd_hooks(self, model) -> Hooks:
        return []


STRUCTURAL: dict[str, type[Ablation]] = {
    "none": NoAblation, "no_conv": NoConv, "clamp_delta": ClampDelta, "freeze_delta": FreezeDelta,
    "no_memory": NoMemory, "no_fading": NoFading, "drop_head": DropHead, "drop_expert": DropExpert,
    "no_window": NoWindow, "no_shift": NoShift, "truncate_filter": TruncateFilter,
}
