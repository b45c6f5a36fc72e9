"""Instrumented Mamba-1 mixer, following mamba_ssm's ``Mamba`` module.

in_proj -> (x, z); depthwise causal conv1d + silu on x -> u; x_proj(u) -> (dt, B, C);
Δ = softplus(dt_proj(dt)); selective scan with A = −exp(A_log) and D skip;
y ⊙ silu(z); out_proj. Every intermediate passes through a HookPoint (DESIGN §2).

Hidden states (``hook_ssm_state``) are materialized only when listened to. An edit of
them propagates to later positions exactly as ``state_override`` does (h is replaced
at the edited positions and later states evolve from it): the difference between
edited and scanned states is carried forward by the same decay Ā through
``linear_recurrence``, with the carry cut at edited positions. This form also makes
the gradient with respect to ``hook_ssm_state`` the total derivative (as if h_t alone
were overridden), which attribution patching needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.kernels import linear_recurrence, selective_scan
from ssmlens.kernels.conv1d import causal_conv1d
from ssmlens.models.fast_path import hook_idle, idle
from ssmlens.models.resume import Resume, StateEdit, edit_difference, window_conv
from ssmlens.models.resume_scan import read_state, scan_read_out, scan_window


def _triton_scan() -> Callable | None:
    """The Triton backend's entry point, or None where Triton does not import (imported
    on first use: importing triton early would decide its interpreter switch)."""
    try:
        from ssmlens.kernels.triton_scan import selective_scan_triton
    except ImportError:
        return None
    return selective_scan_triton


@dataclass(kw_only=True)
class MixerOptions:
    """The Mamba mixer's options as fields of a model config (Mamba, B'MOJO,
    MoE-Mamba inherit them); names and defaults follow mamba_ssm."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"  # "auto" = ceil(d_model / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    bias: bool = False
    conv_bias: bool = True
    scan_backend: str = "auto"

    def mixer_config(self) -> "MixerConfig":
        """The MixerConfig of this model config (its ``d_model`` and mixer fields)."""
        return MixerConfig(d_model=self.d_model, **{f.name: getattr(self, f.name) for f in fields(MixerOptions)})


@dataclass(kw_only=True)
class MixerConfig(MixerOptions):
    """Options of one Mamba mixer."""

    d_model: int

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    def check(self) -> None:
        for name in ("d_model", "d_state", "d_conv", "expand"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dt_rank != "auto" and int(self.dt_rank) < 1:
            raise ValueError(f"dt_rank must be 'auto' or >= 1, got {self.dt_rank!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min/dt_max must satisfy 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")


class MambaMixer(nn.Module):
    def __init__(self, cfg: MixerConfig, n_layers_for_init: int = 1):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        d, di, n, r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.rank
        self.in_proj = nn.Linear(d, 2 * di, bias=cfg.bias)
        self.conv1d = nn.Conv1d(di, di, cfg.d_conv, groups=di, padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d, bias=cfg.bias)
        self._init_dt(cfg)
        with torch.no_grad():  # mamba_ssm's prenorm-residual rescale of out_proj
            self.out_proj.weight /= math.sqrt(n_layers_for_init)

        for name in ("x", "z", "conv", "delta", "B", "C", "ssm_state", "ssm_out", "out"):
            setattr(self, f"hook_{name}", HookPoint())

    def _init_dt(self, cfg: MixerConfig) -> None:
        """dt_proj init of mamba_ssm: weights ~ U(±rank^-0.5·scale); bias = softplus⁻¹(dt),
        dt log-uniform in [dt_min, dt_max]."""
        std = cfg.rank**-0.5 * cfg.dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(cfg.d_inner) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        ).clamp(min=cfg.dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log.float())

    @property
    def A_log2(self) -> Tensor:
        """A·log2(e): exp(Δ·A) = exp2(Δ·A_log2), which the resumed paths use (exp2 ran
        3× faster than exp on this CPU, within an ulp or two of it)."""
        return self.A * math.log2(math.e)

    def forward(self, hidden: Tensor, resume: Resume | None = None) -> Tensor:
        """hidden ``[b, L, d_model]`` -> ``[b, L, d_model]``.

        With ``resume`` (``ssmlens.models.resume``), hidden holds each row's window only; the
        conv reads the cached x before the window and the scan starts from the cached
        state at ``start − 1``.

        Fused paths (``ssmlens.models.fast_path``), each taken only when nothing can see
        the difference: x and z as two products (``_in_proj``), the conv, bias and silu
        as one op (``_conv``), and Δ's bias and softplus inside the scan when
        ``hook_delta`` and ``hook_ssm_state`` are idle (Δ is then never materialized)."""
        edit = resume.own_edit if resume is not None else None
        if edit is not None:
            return self._edited(resume, edit)
        cfg = self.cfg
        x, z = self._in_proj(hidden)
        x = self.hook_x(x)
        z = self.hook_z(z)
        h0 = None
        if resume is None:
            u = self._conv(x)
        else:
            # the conv's zero padding is replaced by the cached x before the window
            u = window_conv(self.conv1d, resume.before("hook_x", cfg.d_conv - 1), x)
            h0 = resume.before("hook_ssm_state", 1)[:, 0]
        u = self.hook_conv(u)
        dt, B, C = self.x_proj(u).split_with_sizes([cfg.rank, cfg.d_state, cfg.d_state], dim=-1)
        want_states = self.hook_ssm_state.listened
        want_y = self.hook_ssm_out.listened or want_states
        in_scan = resume is None and not want_states and hook_idle(self.hook_delta)
        if in_scan:  # Δ = softplus(dt_proj(dt)), computed by the scan from the product
            delta, bias = F.linear(dt, self.dt_proj.weight), self.dt_proj.bias
        else:  # on CUDA the bias is added in the product's epilogue (a contiguous dt): a pass fewer
            dt = dt.contiguous() if dt.is_cuda else dt
            delta, bias = self.hook_delta(F.softplus(F.linear(dt, self.dt_proj.weight, self.dt_proj.bias))), None
        B = self.hook_B(B)
        C = self.hook_C(C)
        A = self.A

        window = resume is not None and self._window_scan(u)

        def scan(states: bool) -> tuple[Tensor, Tensor | None]:
            """(y, states [b, L, d_inner, d_state] if ``states``): the window scan returns
            y before D's gate in fp32 and always its states."""
            if window:
                return scan_window(u, delta, self.A_log2, B, C, self.D, h0)
            return self._scan(u, delta, A, B, C, None if want_y else z, bias, in_scan, h0, states)

        y, states = scan(want_states)
        if window:
            y = y.to(u.dtype) if want_y else (y * F.silu(z.float())).to(u.dtype)
        if want_states:
            y = self._states_through_hook(states, y, delta, A, C, rescan=lambda: scan(True)[1])
        if want_y:
            y = self.hook_ssm_out(y)
            y = y * F.silu(z)
        return self.hook_out(self.out_proj(y))

    def _scan(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, z: Tensor | None,
              bias: Tensor | None, softplus: bool, h0: Tensor | None, states: bool) -> tuple[Tensor, Tensor | None]:
        """``selective_scan`` of this layer -> (y ``[b, L, d_inner]``, every state or
        None). On CUDA with the Triton backend the backend is called directly: these
        arguments are well-formed by construction, and the public API's checks took a
        sixth of a forward's host time (benchmarks/NOTES_model.md), which the GPU waits
        for at mamba-130m size."""
        D = self.D
        backend = self.cfg.scan_backend
        if u.is_cuda and backend in ("auto", "triton") and _triton_scan() is not None:
            positions = torch.arange(u.shape[1], device=u.device) if states else None
            y, _, st = _triton_scan()(u, delta, A, B, C, D, z, bias, softplus, h0, positions, None, None)
            return y, st
        res = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=softplus, initial_state=h0,
                             state_positions="all" if states else None, backend=backend)
        return res.out, res.states

    def _in_proj(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """(x, z) ``[b, L, d_inner]`` each. On CUDA, when ``in_proj`` is idle, two
        products with the halves of its weight give contiguous x and z: the halves of
        one product are strided views, which the scan would copy. Not on the CPU: there
        the torch scan re-lays its inputs anyway, and one product keeps the results
        bit-identical to the module's (an nnsight trace calls every module)."""
        if not (hidden.is_cuda and idle(self.in_proj)):
            return self.in_proj(hidden).chunk(2, dim=-1)
        W, b, di = self.in_proj.weight, self.in_proj.bias, self.cfg.d_inner
        return (F.linear(hidden, W[:di], None if b is None else b[:di]),
                F.linear(hidden, W[di:], None if b is None else b[di:]))

    def _conv(self, x: Tensor) -> Tensor:
        """u = silu(causal depthwise conv of x), ``[b, L, d_inner]``: one fused op
        (``ssmlens.kernels.conv1d``) when the ``conv1d`` module is idle, else the module."""
        conv = self.conv1d
        if idle(conv):
            return causal_conv1d(x, conv.weight[:, 0], conv.bias, silu=True)
        L = x.shape[1]
        return rearrange(F.silu(conv(rearrange(x, "b l d -> b d l"))[..., :L]), "b d l -> b l d")

    def _window_scan(self, u: Tensor) -> bool:
        """Whether a resumed window runs ``ssmlens.models.resume_scan.scan_window`` (on the CPU,
        with the ``torch`` backend's arithmetic, without gradients) rather than
        ``ssmlens.kernels.selective_scan``."""
        return (u.device.type == "cpu" and self.cfg.scan_backend in ("auto", "torch")
                and not torch.is_grad_enabled())

    def _edited(self, resume: Resume, edit: StateEdit) -> Tensor:
        """Output ``[R, window, d_model]`` when the rows' inputs are the cached run's
        and only h at ``edit.position`` is replaced (``ssmlens.models.resume.StateEdit``).

        The difference e_p = h'_p − h_p decays with the unchanged Ā: for t ≥ p,
        e_t = exp(A·Σ_{p<s≤t} Δ_s) ⊙ e_p and y_t moves by C_t·e_t — the closed form of
        the propagation in ``_states_through_hook``, without a scan, from the cached
        Δ, C, z and y. The window may start after p (only later positions are read).
        """
        e_p, decay_sum, after = edit_difference(self, resume, edit)  # R d n; R t d: Σ_{p<s≤t} Δ_s; R t
        e = (decay_sum[..., None] * self.A_log2).exp2_().mul_(e_p[:, None])  # r t d n, in place: one buffer
        dy = read_state(e, resume.window("hook_C").float()) * after[..., None]
        y0 = resume.window("hook_ssm_out")
        y = self.hook_ssm_out((y0.float() + dy).to(y0.dtype)) * F.silu(resume.window("hook_z"))
        return self.hook_out(self.out_proj(y))

    def read_out(self, hidden: Tensor, resume: Resume, local: Tensor) -> Tensor:
        """Output ``[R, Q, d_model]`` at window offsets ``local`` (int64 ``[R, Q]``, ≥ 0,
        past the window too) only, when ``hidden`` ``[R, span, d_model]`` holds the
        window's first ``span`` positions and the inputs after them are the cached run's.

        After the span nothing the scan reads changes (x, hence u, Δ, B, C and z), so
        the states there differ from the cached ones by the span's last difference
        e = h'_end − h_end decaying with the cached Ā: a read at t past the span is
        the cached y_t + C_t·exp(A·Σ_{end<s≤t} Δ_s)·e (``_edited``'s closed form). The
        caller makes the span reach d_conv − 1 positions past the last changed input
        (the conv's reach). No hook of the mixer may be listened to (none fires)."""
        cfg = self.cfg
        span = hidden.shape[1]
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        u = window_conv(self.conv1d, resume.before("hook_x", cfg.d_conv - 1), x)
        dt, B, C = self.x_proj(u).split([cfg.rank, cfg.d_state, cfg.d_state], dim=-1)
        delta = F.softplus(dt @ self.dt_proj.weight.T + self.dt_proj.bias)
        h0 = resume.before("hook_ssm_state", 1)[:, 0]
        in_span = local.clamp(max=span - 1)
        h_end, y = scan_read_out(u, delta, self.A_log2, B, C, self.D.float(), h0, in_span)
        rows = torch.arange(local.shape[0], device=local.device)[:, None]
        y = y * F.silu(z[rows, in_span].float())
        late = local >= span  # R q
        if bool(late.any()):
            y = torch.where(late[..., None], self._decayed_read(resume, h_end, span, local), y)
        return self.out_proj(y.to(hidden.dtype))

    def _decayed_read(self, resume: Resume, h_end: Tensor, span: int, local: Tensor) -> Tensor:
        """Gated y ``[R, Q, d_inner]`` (fp32) at window offsets ``local`` past the span
        (others: any value), from the cached run plus the decayed state difference at
        the span's end (``read_out``)."""
        end = resume.start + span - 1  # R, absolute
        at = (resume.start[:, None] + local).clamp(max=resume.seq_len - 1)  # R q, absolute
        ex = resume.ex[:, None]
        state = resume.cache[resume.scope + "hook_ssm_state"]
        e = h_end - state[resume.ex, end].float()  # R d n
        decay_sum = resume.span_sum("hook_delta", end, at)  # R q d: Σ_{end<s≤t} Δ_s
        e_t = (decay_sum[..., None] * self.A_log2).exp2_().mul_(e[:, None])  # R q d n
        C = resume.cache[resume.scope + "hook_C"][ex, at].float()
        y0 = resume.cache[resume.scope + "hook_ssm_out"][ex, at].float()
        z = resume.cache[resume.scope + "hook_z"][ex, at].float()
        return (y0 + read_state(e_t, C)) * F.silu(z)

    def _states_through_hook(self, h: Tensor, y: Tensor, delta: Tensor, A: Tensor, C: Tensor,
                             rescan: Callable[[], Tensor]) -> Tensor:
        """Fire hook_ssm_state on h ``[b, L, d_inner, d_state]`` and fold any edit into y.

        e_t = a_t·e_{t-1} + (h'_t − h_t) with a_t = Ā_t except 0 where h was edited,
        so h + e is the state sequence of a scan overridden at the edited positions,
        and y + C·e its readout. ``rescan()`` gives the scanned states again (for a hook
        that edited them in place, without gradients).
        """
        needs_grad = False
        if torch.is_grad_enabled():
            # The hook gets a copy: a hook that edits in place (``h[:, t] = v; return h``)
            # must still be seen as an edit, so the scanned states are kept apart; the
            # copy is also the tensor whose gradient is the total derivative.
            h_edit = self.hook_ssm_state(h.clone())
            needs_grad = h_edit.requires_grad
            if not needs_grad and torch.equal(h_edit, h):  # a listener that only reads: one pass
                return y
        else:
            # No copy (the states are the largest tensor of the forward): an in-place
            # edit shows in h's version counter, and then the scan gives h again.
            version = h._version
            h_edit = self.hook_ssm_state(h)
            if h._version == version:
                if h_edit is h:  # a listener that only reads
                    return y
            else:
                h = rescan()
        diff = h_edit - h
        edited = (diff != 0).flatten(2).any(-1)  # b L
        if not bool(edited.any()) and not needs_grad:
            return y
        a = torch.exp(einsum(delta.float(), A, "b l d, d n -> b l d n"))
        a = a.masked_fill(edited[:, :, None, None], 0.0)
        e = linear_recurrence(a, diff)
        return y + einsum(e, C.float(), "b l d n, b l n -> b l d").to(y.dtype)
