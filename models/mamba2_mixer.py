"""Instrumented Mamba-2 mixer (SSD; Dao & Gu 2024), following transformers' ``Mamba2Mixer``.

    (z, xBC, dt) = in_proj(hidden)
    (u, B, C)    = silu(causal depthwise conv1d(xBC))        x, B, C share one conv
    Δ            = softplus(dt + dt_bias)   per head, clamped to [dt_limit_min, dt_limit_max]
    A            = −exp(A_log)              a scalar per head
    h_t          = exp(Δ_t·A)·h_{t−1} + Δ_t·u_t ⊗ B_t      per head: [d_head, d_state];
                                                           B, C shared by a group of heads
    y_t          = h_t·C_t + D·u_t          (D per head)
    out          = out_proj(RMSNorm_groups(y ⊙ silu(z)) · w)

Hooks (DESIGN §2): ``hook_x`` / ``hook_z`` ``[b, pos, d_inner]`` (x before the conv),
``hook_conv`` (u) ``[b, pos, d_inner]``, ``hook_delta`` ``[b, pos, head]``,
``hook_B`` / ``hook_C`` ``[b, pos, group, d_state]``, ``hook_ssm_state``
``[b, pos, head, d_head, d_state]`` (only when listened to), ``hook_ssm_out`` (y)
``[b, pos, d_inner]`` and ``hook_out`` ``[b, pos, d_model]``.

The scan: without states, ``ssmlens.kernels.ssd.ssd_scan`` (chunked, matrix products).
With states, ``ssmlens.kernels.selective_scan`` with Δ and A expanded from heads to their
channels (Mamba-2 is the Mamba-1 scan with Δ shared by a head's channels, A scalar per
head and grouped B/C), so state positions, the backends and the float64 reference
come from the scan contract (DESIGN §3). An edit of ``hook_ssm_state`` propagates as in
the Mamba-1 mixer: the state is replaced at the edited positions and later states
evolve from it (``_states_through_hook``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from jaxtyping import Float
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.kernels import BACKENDS, linear_recurrence, selective_scan
from ssmlens.kernels.ssd import ssd_scan
from ssmlens.models.resume import Resume, StateEdit, edit_difference, window_conv
from ssmlens.models.resume_scan import read_state

SCAN_BACKENDS = ("ssd", *BACKENDS)


@dataclass(kw_only=True)
class Mamba2Options:
    """The Mamba-2 mixer's options as fields of a model config; names follow ours
    (``MixerOptions``), defaults mamba_ssm's ``Mamba2``."""

    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    d_head: int = 64
    n_groups: int = 1
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit_min: float = 0.0
    dt_limit_max: float | None = None  # None: no upper clamp (mamba_ssm's inf)
    A_init_min: float = 1.0
    A_init_max: float = 16.0
    bias: bool = False
    conv_bias: bool = True
    # "auto"/"ssd": ssd_scan when no state is listened to; else selective_scan (its "auto").
    # "triton"/"torch"/"reference": always selective_scan with that backend.
    scan_backend: str = "auto"
    ssd_chunk: int = 64

    def mamba2_config(self) -> "Mamba2MixerConfig":
        """The mixer config of this model config (its ``d_model``, ``norm_eps`` and mixer fields)."""
        return Mamba2MixerConfig(d_model=self.d_model, norm_eps=self.norm_eps,
                                 **{f.name: getattr(self, f.name) for f in fields(Mamba2Options)})


@dataclass(kw_only=True)
class Mamba2MixerConfig(Mamba2Options):
    d_model: int
    norm_eps: float = 1e-5

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        return self.d_inner // self.d_head

    def check(self) -> None:
        for name in ("d_model", "d_state", "d_conv", "expand", "d_head", "n_groups", "ssd_chunk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_inner % self.d_head:
            raise ValueError(f"d_head={self.d_head} must divide d_inner=expand*d_model={self.d_inner}")
        if self.n_heads % self.n_groups:
            raise ValueError(f"n_groups={self.n_groups} must divide the number of heads {self.n_heads}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min/dt_max must satisfy 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"scan_backend must be one of {SCAN_BACKENDS}, got {self.scan_backend!r}")


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: Mamba2MixerConfig, n_layers_for_init: int = 1):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        d, di, n, H, g = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.n_heads, cfg.n_groups
        self.conv_dim = di + 2 * g * n
        self.in_proj = nn.Linear(d, di + self.conv_dim + H, bias=cfg.bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(self._dt_bias_init(cfg))
        A = torch.empty(H).uniform_(cfg.A_init_min, cfg.A_init_max)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = GatedRMSNorm(di, group_size=di // g, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(di, d, bias=cfg.bias)
        with torch.no_grad():  # mamba_ssm's prenorm-residual rescale of out_proj
            self.out_proj.weight /= math.sqrt(n_layers_for_init)
        for name in ("x", "z", "conv", "delta", "B", "C", "ssm_state", "ssm_out", "out"):
            setattr(self, f"hook_{name}", HookPoint())

    @staticmethod
    def _dt_bias_init(cfg: Mamba2MixerConfig) -> Tensor:
        """softplus⁻¹(dt) with dt log-uniform in [dt_min, dt_max] (mamba_ssm)."""
        dt = torch.exp(torch.rand(cfg.n_heads) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                       + math.log(cfg.dt_min)).clamp(min=cfg.dt_init_floor)
        return dt + torch.log(-torch.expm1(-dt))

    @property
    def A(self) -> Float[Tensor, " head"]:
        return -torch.exp(self.A_log.float())

    def forward(self, hidden: Float[Tensor, "b L d_model"], resume: Resume | None = None,
                before: Float[Tensor, "b k d_model"] | None = None) -> Float[Tensor, "b L d_model"]:
        """hidden ``[b, L, d_model]`` -> ``[b, L, d_model]``.

        With ``resume`` (``ssmlens.models.resume``), hidden holds each row's window only
        and ``before`` the mixer's input at the d_conv − 1 positions before it (the
        cached run's, zero before position 0): the conv reads the xBC ``in_proj`` makes
        of it, and the scan starts from the cached state at ``start − 1``."""
        cfg = self.cfg
        L, H, P, g, n = hidden.shape[1], cfg.n_heads, cfg.d_head, cfg.n_groups, cfg.d_state
        edit = resume.own_edit if resume is not None else None
        if edit is not None:
            return self._edited(resume, edit)
        z, xBC, dt = self.in_proj(hidden).split([cfg.d_inner, self.conv_dim, H], dim=-1)
        z = self.hook_z(z)
        x, BC = xBC.split([cfg.d_inner, 2 * g * n], dim=-1)
        xBC = torch.cat([self.hook_x(x), BC], dim=-1)
        h0, chunk = None, cfg.ssd_chunk
        if resume is None:
            xBC = rearrange(F.silu(self.conv1d(rearrange(xBC, "b l c -> b c l"))[..., :L]), "b c l -> b l c")
        else:
            xBC = window_conv(self.conv1d, self._xbc_before(resume, before), xBC)
            h0 = resume.before("hook_ssm_state", 1)[:, 0].float()  # b head d_head d_state
            chunk = min(chunk, L)  # a short window: one chunk, no padding
        u, B, C = xBC.split([cfg.d_inner, g * n, g * n], dim=-1)
        u = self.hook_conv(u)
        B = self.hook_B(rearrange(B, "b l (g n) -> b l g n", g=g))
        C = self.hook_C(rearrange(C, "b l (g n) -> b l g n", g=g))
        delta = F.softplus(dt + self.dt_bias)
        if cfg.dt_limit_min > 0.0 or cfg.dt_limit_max is not None:
            delta = delta.clamp(min=cfg.dt_limit_min, max=cfg.dt_limit_max)
        delta = self.hook_delta(delta)
        A = self.A

        want_states = self.hook_ssm_state.listened
        if not want_states and cfg.scan_backend in ("auto", "ssd"):
            y, _ = ssd_scan(rearrange(u, "b l (h p) -> b l h p", p=P), delta, A, B, C, self.D, initial_state=h0,
                            chunk=chunk)
            y = rearrange(y, "b l h p -> b l (h p)").to(u.dtype)
        else:
            res = selective_scan(
                u, repeat(delta, "b l h -> b l (h p)", p=P), repeat(A, "h -> (h p) n", p=P, n=n), B, C,
                repeat(self.D.float(), "h -> (h p)", p=P), delta_softplus=False,
                initial_state=None if h0 is None else rearrange(h0, "b h p n -> b (h p) n"),
                state_positions="all" if want_states else None,
                backend="auto" if cfg.scan_backend == "ssd" else cfg.scan_backend,
            )
            y = res.out
            if want_states:
                states = rearrange(res.states, "b l (h p) n -> b l h p n", p=P)
                y = self._states_through_hook(states, y, delta, A, C)
        y = self.hook_ssm_out(y)
        return self.hook_out(self.out_proj(self.norm(y, z)))

    def _xbc_before(self, resume: Resume, before: Float[Tensor, "b k d_model"]) -> Float[Tensor, "b k conv_dim"]:
        """The conv's input xBC at the k = d_conv − 1 positions before each row's window,
        zero before position 0 (the conv's padding). No hook holds the pre-conv B and C
        (``hook_B`` / ``hook_C`` are after the conv), so xBC is rebuilt from the mixer's
        cached input by ``in_proj``'s xBC rows, without firing anything."""
        di, k = self.cfg.d_inner, before.shape[1]
        rows = slice(di, di + self.conv_dim)
        bias = self.in_proj.bias
        xbc = F.linear(before, self.in_proj.weight[rows], None if bias is None else bias[rows])
        pos = resume.start[:, None] - k + torch.arange(k, device=resume.start.device)
        return torch.where((pos >= 0)[..., None], xbc, 0.0)

    def _edited(self, resume: Resume, edit: StateEdit) -> Float[Tensor, "R window d_model"]:
        """Output over the window when the rows' inputs are the cached run's and only h
        at ``edit.position`` is replaced (``ssmlens.models.resume.StateEdit``): as
        ``MambaMixer._edited``, the difference decays per head, e_t = exp(A·Σ_{p<s≤t} Δ_s)
        ⊙ e_p, and y_t moves by C_t·e_t, from the cached Δ, C, z and y without a scan."""
        e_p, decay_sum, after = edit_difference(self, resume, edit)  # R h p n; R t h; R t
        decay = (decay_sum * self.A).exp()  # R t h
        e = decay[..., None, None] * e_p[:, None]  # R t h p n
        dy = read_state(e, self._heads(resume.window("hook_C").float())) * after[..., None, None]
        y0 = resume.window("hook_ssm_out")
        y = self.hook_ssm_out((y0.float() + rearrange(dy, "r t h p -> r t (h p)")).to(y0.dtype))
        return self.hook_out(self.out_proj(self.norm(y, resume.window("hook_z"))))

    def _heads(self, BC: Float[Tensor, "... group d_state"]) -> Float[Tensor, "... head d_state"]:
        """Grouped B or C repeated to the heads of each group."""
        return repeat(BC, "... g n -> ... (g r) n", r=self.cfg.n_heads // self.cfg.n_groups)

    def _states_through_hook(self, h: Float[Tensor, "b L head d_head d_state"], y: Float[Tensor, "b L d_inner"],
                             delta: Float[Tensor, "b L head"], A: Float[Tensor, " head"],
                             C: Float[Tensor, "b L group d_state"]) -> Float[Tensor, "b L d_inner"]:
        """Fire hook_ssm_state on h and fold any edit into y (as ``MambaMixer`` does):
        e_t = a_t·e_{t−1} + (h'_t − h_t) with a_t = exp(Δ_t·A) except 0 where h was
        edited, so h + e is the state sequence of a scan overridden at the edited
        positions, and y + C·e its readout."""
        # The hook gets a copy: an in-place edit (``h[:, t] = v; return h``) is still an edit.
        h_edit = self.hook_ssm_state(h.clone())
        needs_grad = torch.is_grad_enabled() and h_edit.requires_grad
        if not needs_grad and torch.equal(h_edit, h):
            return y
        diff = h_edit - h
        edited = (diff != 0).flatten(2).any(-1)  # b L
        if not bool(edited.any()) and not needs_grad:
            return y
        a = torch.exp(delta.float() * A).masked_fill(edited[:, :, None], 0.0)  # b L head
        e = linear_recurrence(a[..., None, None].expand_as(diff), diff)
        dy = einsum(e, self._heads(C.float()), "b l h p n, b l h n -> b l h p")
        return y + rearrange(dy, "b l h p -> b l (h p)").to(y.dtype)


class GatedRMSNorm(nn.Module):
    """RMSNorm of y ⊙ silu(z) over groups of ``group_size`` channels, in fp32
    (transformers' ``Mamba2RMSNormGated``; mamba_ssm's with ``norm_before_gate=False``)."""

    def __init__(self, d: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: Float[Tensor, "... d"], z: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        dtype = y.dtype
        gated = rearrange(y.float() * F.silu(z.float()), "... (g c) -> ... g c", c=self.group_size)
        normed = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * rearrange(normed, "... g c -> ... (g c)").to(dtype)
