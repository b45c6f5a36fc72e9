"""H3's diagonal state space model (S4D: complex diagonal A), as a convolution kernel
and as a recurrence, with the float64 sequential reference beside them.

Per channel c (H of them) and mode m (M = d_state / 2 complex modes), with the
bilinear discretization of zoology's ``SSKernelDiag`` (A = −exp(A_re_log) + i·A_im,
Δ = exp(log_dt); S4D-Lin init A_m = −½ + iπm):

    Ā = (1 + ΔA/2) / (1 − ΔA/2),   B̄ = Δ / (1 − ΔA/2)         (B is folded into C)
    h_t = Ā ⊙ h_{t−1} + B̄ x_t,     y_t = 2·Re(Σ_m C_m h_{t,m})
    ⇔ y = K * x (causal convolution),   K_l = 2·Re(Σ_m C_m B̄_m Ā_m^l)

``kernel`` gives K (for ``ssmlens.kernels.fft_causal_conv``), ``states`` the h_t, and
``states_as_real`` / ``states_from_real`` the real layout ``hook_ssm_state`` shows: the
d_state real numbers of a channel are (Re h_m, Im h_m) at (2m, 2m + 1).
``diagonal_ssm_reference`` is the recurrence one step at a time in complex128, with
optional state overrides.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import einsum, rearrange
from jaxtyping import Complex, Float
from torch import Tensor

from ssmlens.kernels import linear_recurrence


def _no_decay(p: nn.Parameter) -> nn.Parameter:
    p._no_weight_decay = True  # SSM dynamics, not weights (ssmlens.interp.training.optim)
    return p


class DiagonalSSM(nn.Module):
    """``channels`` independent complex diagonal SSMs of ``d_state`` real numbers each."""

    def __init__(self, channels: int, d_state: int, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        if d_state < 2 or d_state % 2:
            raise ValueError(f"d_state must be even and >= 2 (d_state/2 complex modes), got {d_state}")
        M = d_state // 2
        self.channels, self.modes = channels, M
        log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.A_re_log = _no_decay(nn.Parameter(torch.full((channels, M), math.log(0.5))))
        self.A_im = _no_decay(nn.Parameter(math.pi * torch.arange(M, dtype=torch.float32).repeat(channels, 1)))
        self.C = _no_decay(nn.Parameter(torch.view_as_real(torch.randn(channels, M, dtype=torch.cfloat))))

    def discretize(self) -> tuple[Complex[Tensor, "channel mode"], Complex[Tensor, "channel mode"],
                                  Complex[Tensor, "channel mode"]]:
        """(Ā, B̄, C) of the bilinear discretization (module docstring), complex64."""
        dt = self.log_dt.float().exp()[:, None]
        A = torch.complex(-self.A_re_log.float().exp(), self.A_im.float())
        dtA = dt * A
        dA = (1 + dtA / 2) / (1 - dtA / 2)
        dB = dt / (1 - dtA / 2)
        return dA, dB, torch.view_as_complex(self.C.float().contiguous())

    def kernel(self, L: int) -> Float[Tensor, "channel lag"]:
        """K_l = 2·Re(Σ_m C_m B̄_m Ā_m^l), l = 0 … L − 1 (a Vandermonde product)."""
        dA, dB, C = self.discretize()
        powers = torch.exp(dA.log()[..., None] * torch.arange(L, device=dA.device))  # c m l
        return 2 * einsum(C * dB, powers, "c m, c m l -> c l").real

    def states(self, x: Float[Tensor, "b L channel"]) -> Complex[Tensor, "b L channel mode"]:
        """h_t = Ā ⊙ h_{t−1} + B̄ x_t from h_{−1} = 0 (``linear_recurrence``, complex)."""
        dA, dB, _ = self.discretize()
        inputs = einsum(x.float().to(dB.dtype), dB, "b l c, c m -> b l c m")
        return linear_recurrence(dA.expand_as(inputs).contiguous(), inputs)

    def read(self, h: Complex[Tensor, "b L channel mode"]) -> Float[Tensor, "b L channel"]:
        """y_t = 2·Re(Σ_m C_m h_{t,m})."""
        _, _, C = self.discretize()
        return 2 * einsum(h, C, "b l c m, c m -> b l c").real

    def carried(self, diff: Complex[Tensor, "b L channel mode"], edited: Tensor) -> Complex[Tensor, "b L channel mode"]:
        """e_t = a_t ⊙ e_{t−1} + diff_t with a = Ā, except 0 at ``edited`` positions
        (bool ``[b, L]``): how a replaced state's difference travels forward."""
        dA, _, _ = self.discretize()
        a = dA.expand_as(diff).masked_fill(edited[:, :, None, None], 0)
        return linear_recurrence(a.contiguous(), diff)


def states_as_real(h: Complex[Tensor, "... mode"]) -> Float[Tensor, "... d_state"]:
    """Complex states -> the real layout of ``hook_ssm_state``: (Re, Im) of mode m at (2m, 2m+1)."""
    return rearrange(torch.view_as_real(h), "... m two -> ... (m two)")


def states_from_real(x: Float[Tensor, "... d_state"]) -> Complex[Tensor, "... mode"]:
    """Inverse of ``states_as_real``."""
    return torch.view_as_complex(rearrange(x.float(), "... (m two) -> ... m two", two=2).contiguous())


def diagonal_ssm_reference(x: Tensor, dA: Tensor, dB: Tensor, C: Tensor,
                           state_override: dict[int, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """h_t = Ā h_{t−1} + B̄ x_t, y_t = 2·Re(C·h_t), one position at a time in complex128.

    x ``[b, L, c]``; Ā, B̄, C ``[c, m]``; ``state_override`` {t: complex ``[b, c, m]``}
    replaces h_t before it is read (later states evolve from it). Returns (y
    ``[b, L, c]`` float64, h ``[b, L, c, m]`` complex128)."""
    dA, dB, C = dA.to(torch.complex128), dB.to(torch.complex128), C.to(torch.complex128)
    x = x.double().to(torch.complex128)
    h = torch.zeros(x.shape[0], *dA.shape, dtype=torch.complex128, device=x.device)
    ys, hs = [], []
    for t in range(x.shape[1]):
        h = dA * h + dB * x[:, t, :, None]
        if state_override and t in state_override:
            h = state_override[t].to(torch.complex128).clone()
        ys.append(2 * (h * C).sum(-1).real)
        hs.append(h)
    return torch.stack(ys, 1), torch.stack(hs, 1)
