"""Stability and memory diagnostics of H3's mixer (``ssmlens.probes.diagnostics``): the
spectrum of its fixed diagonal SSM.

H3's long convolution is a time-invariant complex diagonal SSM per head
(``ssmlens.models.h3_ssm.DiagonalSSM``): Ā_m = (1 + ΔA_m/2) / (1 − ΔA_m/2) with Δ a
parameter per head and A_m = −exp(A_re_log) + i·A_im. Every token sees the same Ā, so

- decay rates: −log|Ā_m| per head and mode (the same at every token; ``decay_quantiles``
  over heads and modes), ``radius`` max |Ā| at every position;
- ``horizon`` per head: 1 / min_m(−log|Ā_m|), the e-folding time of its slowest mode;
- ``abscissa``: max Re A (< 0: the bilinear transform maps it inside the unit circle,
  the recurrence is stable), per head in ``channel_abscissa``;
- Δ: the token variance of log Δ is 0 (Δ does not depend on the input: input share 0 by
  construction), the channel variance is log Δ's variance across heads.

The shift SSM before it is a FIR of ``d_state`` taps (its A is the nilpotent shift, all
eigenvalues 0): its memory is exactly ``d_state`` tokens, not a spectrum, and is not
included here.
"""

from __future__ import annotations

import numpy as np
import torch

from ssmlens.models.h3 import H3Mixer
from ssmlens.probes.diagnostics import QUANTILES, LayerDiagnostics, register_diagnostics


def lti_diagnostics(dA: torch.Tensor, A: torch.Tensor, log_dt: torch.Tensor, L: int, layer: int = 0
                    ) -> LayerDiagnostics:
    """Diagnostics of a time-invariant diagonal SSM: discrete Ā ``[head, mode]`` (complex or
    real), continuous A ``[head, mode]`` (its real part decides stability), log Δ ``[head]``;
    ``L`` positions for ``radius``."""
    rate = -torch.log(dA.detach().abs().double())  # [h, m], −log|Ā|
    q = torch.quantile(rate.flatten(), torch.tensor(QUANTILES, dtype=torch.float64))
    re = torch.as_tensor(A).detach().real.double() if torch.is_complex(A) else torch.as_tensor(A).detach().double()
    log_dt = log_dt.detach().double()
    return LayerDiagnostics(
        layer=int(layer), decay_quantiles=q.numpy(),
        radius=np.full(int(L), float(torch.exp(-rate.min()))), horizon=(1.0 / rate.min(-1).values).numpy(),
        abscissa=float(re.max()), channel_abscissa=re.max(-1).values.numpy(),
        delta_token_var=0.0, delta_channel_var=float(log_dt.var(unbiased=False)), kind="lti", group="head",
    )


@register_diagnostics(H3Mixer)
def h3_diagnostics(model, layer: int, scope: str, mixer: H3Mixer, cache, tokens) -> LayerDiagnostics:
    """The fixed diagonal SSM of the H3 mixer at ``scope`` (module docstring)."""
    ssm = mixer.ssm
    # the bilinear discretization of DiagonalSSM.discretize, in complex128: the slowest
    # rates are ~1e-3, where complex64 would leave 1e-4 relative error in the horizon
    dt = ssm.log_dt.detach().double().exp()[:, None]
    A = torch.complex(-ssm.A_re_log.detach().double().exp(), ssm.A_im.detach().double())
    dA = (1 + dt * A / 2) / (1 - dt * A / 2)
    return lti_diagnostics(dA, A, ssm.log_dt, tokens.shape[1], layer)


h3_diagnostics.hooks = lambda scope: []
