"""Memory diagnostics of Hyena's mixer (``ssmlens.probes.diagnostics``): how far back its
implicit long filters reach.

Hyena has no recurrence and no step size: its memory is the shape of its long filters
h^n ``[order, channel, lag]`` (``HyenaFilter.filters``: a positional MLP times a fixed
exponential-decay window). For each filter (order × channel) on the sequence's L lags:

- ``horizon``: how many lags (lag 0 included) the filter needs to gather 1 − 1/e of its
  ℓ1 mass over the L lags: the smallest ℓ with Σ_{l<ℓ} |h_l| ≥ (1 − 1/e)·Σ_{l<L} |h_l|
  (for h_l = e^{−l/τ} and L ≫ τ that is ⌈τ⌉, the e-folding time the SSMs' horizon
  measures; a filter that does not decay within L gets about 0.63·L);
- decay rates: 1 / horizon per filter (``decay_quantiles``);
- abscissa, radius and the Δ statistics: NaN (no A, no Δ).

The skip β (lag 0 only) is left out: it is not memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ssmlens.models.hyena import HyenaMixer
from ssmlens.probes.diagnostics import QUANTILES, LayerDiagnostics, register_diagnostics


def mass_horizon(h: torch.Tensor) -> torch.Tensor:
    """Lags (≥ 1, lag 0 included) each filter ``[..., lag]`` needs to gather 1 − 1/e of its ℓ1 mass."""
    mass = h.detach().double().abs().cumsum(-1)
    total = mass[..., -1:].clamp_min(1e-300)
    return ((mass / total) < 1 - math.exp(-1)).sum(-1).double() + 1  # + the lag that reaches it


@register_diagnostics(HyenaMixer)
def hyena_diagnostics(model, layer: int, scope: str, mixer: HyenaMixer, cache, tokens) -> LayerDiagnostics:
    """The long filters of the Hyena mixer at ``scope`` over the tokens' length (module docstring)."""
    L = tokens.shape[1]
    with torch.no_grad():
        horizon = mass_horizon(mixer.filter.filters(L)).flatten()  # [order·channel]
    rate = 1.0 / horizon
    q = torch.quantile(rate, torch.tensor(QUANTILES, dtype=torch.float64))
    nan = float("nan")
    return LayerDiagnostics(layer=int(layer), decay_quantiles=q.numpy(), radius=np.full(L, nan),
                            horizon=horizon.numpy(), abscissa=nan, channel_abscissa=np.full(horizon.numel(), nan),
                            delta_token_var=nan, delta_channel_var=nan, kind="filter", group="filter")


hyena_diagnostics.hooks = lambda scope: []
