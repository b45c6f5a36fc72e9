"""Stability and memory diagnostics of recurrent and convolutional layers: how fast each
layer forgets, how stable its recurrence is, and how much its discretization depends on
the input.

Per layer with a selective scan (Mamba-1's mixer in Mamba, MoE-Mamba and B'MOJO), from
Δ ``[batch, pos, d_inner]`` (``mixer.hook_delta``, after softplus) and A ``[d_inner,
d_state]`` (= −exp(A_log)) on a batch of task inputs:

- ``decay``: the spectrum of Ā_t = exp(Δ_t A) over tokens. Ā_t is diagonal, so its
  eigenvalues are its entries; ``decay_quantiles`` are quantiles (over examples, tokens,
  channels and states) of the per-token decay rate −log Ā = Δ·|A| (0: keeps
  everything; 1: keeps e^−1 per token), and ``radius`` ``[pos]`` is the spectral radius
  max_{d,n} Ā_t per token (mean over examples): how much of the state survives the
  slowest direction at each position.
- ``horizon`` ``[d_inner]``: memory horizon of each channel in tokens, 1 / (mean_t Δ_d ·
  min_n |A_{d,n}|): the e-folding time of its slowest state (the dashboard's
  ``memory_horizon``, over a batch).
- ``abscissa``: A's spectral abscissa max_{d,n} A_{d,n} (A is diagonal per channel; < 0
  means every state decays for any Δ > 0, i.e. the recurrence is stable), and the
  per-channel abscissa ``[d_inner]``.
- ``delta_dependence``: how much Δ depends on the input: the variance of log Δ across
  tokens (within a channel, over examples and positions; averaged over channels)
  against its variance across channels (of each channel's mean). ``input_share`` =
  token / (token + channel) is 0 when Δ is a per-channel constant (a time-invariant
  SSM such as S4) and near 1 when the step size is set by the token, not the channel.
  Log Δ, because Δ spans orders of magnitude (softplus of a dt init log-uniform in
  [1e-3, 1e-1]).

The other families (one module ``ssmlens.probes.diagnostics_<name>`` each, found by
themselves like the token-mixing views):

- Mamba-2 (``diagnostics_mamba2``): the same quantities per *head* (Δ per head, A a
  scalar per head): ``layer_diagnostics(Δ, A[:, None])``.
- H3 (``diagnostics_h3``): its diagonal SSM is time-invariant (Δ a parameter per head),
  so the spectrum is that of its fixed Ā = (1 + ΔA/2)/(1 − ΔA/2) (bilinear, complex
  modes): rates −log|Ā|, horizon 1 / min_m(−log|Ā_m|) per head, abscissa max Re A, Δ's
  input share 0 by construction. Its shift SSM is a FIR of ``d_state`` taps (nilpotent
  A, all eigenvalues 0): its horizon is exactly ``d_state`` tokens, not a spectrum.
- Hyena (``diagnostics_hyena``): no recurrence and no Δ; the implicit long filters' decay:
  the horizon of each filter (order × channel) is the lag by which it has gathered
  1 − 1/e of its ℓ1 mass over the sequence (for an exponential e^{−l/τ} that is τ, the
  e-folding time, as for the SSMs); decay rates are 1 / horizon; abscissa, radius and
  the Δ statistics are NaN.
- Based: none. Its linear attention has no decay at all (Ā = I: the kv-state is a sum
  over every earlier token, horizon ∞) and its window is exactly ``window`` tokens; how
  much of the past it reads is decided by the feature map, which its token-mixing view
  (``ssmlens.probes.mixing_based``) shows. Attention layers have none either.

``layer_diagnostics(delta, A)`` computes the selective ones from arrays (tests use known Δ
and A); ``model_diagnostics(model, tokens)`` runs the model once and returns them for
every layer whose mixer has a registered diagnostic (``register_diagnostics(MixerClass)``;
layers without one are left out).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ssmlens.models.mamba_mixer import MambaMixer

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_REGISTRY: dict[type, Callable] = {}
_DISCOVERED = False


@dataclass
class LayerDiagnostics:
    """Diagnostics of one layer (module docstring); numpy float64 arrays; NaN where a
    quantity does not exist for the layer's kind (Hyena has no Δ and no A)."""

    layer: int
    decay_quantiles: np.ndarray  # [len(QUANTILES)] of the decay rate Δ·|A| per token
    radius: np.ndarray  # [pos]: max_{d,n} exp(Δ_t A), mean over examples
    horizon: np.ndarray  # [d_inner] tokens
    abscissa: float  # max_{d,n} A
    channel_abscissa: np.ndarray  # [d_inner]
    delta_token_var: float  # variance of log Δ across tokens, mean over channels
    delta_channel_var: float  # variance across channels of each channel's mean log Δ
    kind: str = "selective"  # "selective" (Mamba-1/2), "lti" (H3's fixed SSM), "filter" (Hyena)
    group: str = "channel"  # what horizon's axis is: "channel", "head", "filter" (order × channel)

    @property
    def input_share(self) -> float:
        total = self.delta_token_var + self.delta_channel_var
        if not np.isfinite(total):
            return float("nan")
        return float(self.delta_token_var / total) if total > 0 else 0.0

    @property
    def median_horizon(self) -> float:
        return float(np.median(self.horizon))

    def scalars(self) -> dict[str, float]:
        """The one-number summaries (a table row)."""
        return {
            "median_decay_rate": float(self.decay_quantiles[len(QUANTILES) // 2]),
            "median_horizon": self.median_horizon,
            "max_horizon": float(np.max(self.horizon)),
            "abscissa": float(self.abscissa),
            "delta_token_var": float(self.delta_token_var),
            "delta_channel_var": float(self.delta_channel_var),
            "delta_input_share": self.input_share,
        }


def layer_diagnostics(delta: Float[Tensor, "batch pos d_inner"], A: Float[Tensor, "d_inner d_state"],
                      layer: int = 0) -> LayerDiagnostics:
    """Diagnostics from Δ (after softplus, > 0) and A (module docstring)."""
    delta = torch.as_tensor(delta).detach().double().cpu()
    A = torch.as_tensor(A).detach().double().cpu()
    if delta.ndim != 3 or A.ndim != 2 or delta.shape[-1] != A.shape[0]:
        raise ValueError(f"delta must be [batch, pos, d_inner] and A [d_inner, d_state] with the same d_inner, "
                         f"got {tuple(delta.shape)} and {tuple(A.shape)}")
    if bool((delta <= 0).any()):
        raise ValueError("delta must be > 0 (Δ after softplus)")
    rate = delta[..., None] * A.abs()  # [b, L, d, n]: −log Ā
    flat = rate.flatten()
    flat = flat[:: -(-flat.numel() // 2**22)]  # an even subsample: torch.quantile takes at most 2^24 values
    q = torch.quantile(flat, torch.tensor(QUANTILES, dtype=torch.float64))
    radius = torch.exp(-rate.flatten(2).min(-1).values).mean(0)  # [L]
    slowest = A.abs().min(-1).values  # [d]
    horizon = 1.0 / (delta.mean((0, 1)) * slowest)
    log_delta = delta.log().flatten(0, 1)  # [b·L, d]
    token_var = float(log_delta.var(0, unbiased=False).mean())
    channel_var = float(log_delta.mean(0).var(unbiased=False))
    return LayerDiagnostics(
        layer=int(layer), decay_quantiles=q.numpy(), radius=radius.numpy(), horizon=horizon.numpy(),
        abscissa=float(A.max()), channel_abscissa=A.max(-1).values.numpy(),
        delta_token_var=token_var, delta_channel_var=channel_var,
    )


def register_diagnostics(mixer_class: type) -> Callable:
    """Decorator: ``fn(model, layer, scope, module, cache, tokens) -> LayerDiagnostics`` for
    a mixer class; ``fn.hooks(scope)`` lists the hooks it reads from ``cache`` (none: no
    forward is run for it)."""
    def decorate(fn):
        _REGISTRY[mixer_class] = fn
        return fn

    return decorate


def _discover() -> None:
    """Import every ``ssmlens.probes.diagnostics_*`` module once (each registers its mixers)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import ssmlens.probes as probes

    for info in pkgutil.iter_modules(probes.__path__):
        if info.name.startswith("diagnostics_"):
            importlib.import_module(f"{probes.__name__}.{info.name}")
    _DISCOVERED = True


def _diagnostic_for(module):
    _discover()
    return next((_REGISTRY[c] for c in type(module).__mro__ if c in _REGISTRY), None)


def registered_diagnostics() -> list[str]:
    _discover()
    return sorted(c.__name__ for c in _REGISTRY)


@register_diagnostics(MambaMixer)
def mamba_diagnostics(model, layer: int, scope: str, mixer: MambaMixer, cache, tokens) -> LayerDiagnostics:
    """Mamba-1's mixer (Mamba, MoE-Mamba, B'MOJO's fading memory): Δ from its hook, A = −exp(A_log)."""
    return layer_diagnostics(cache[f"{scope}.hook_delta"], mixer.A, layer)


mamba_diagnostics.hooks = lambda scope: [f"{scope}.hook_delta"]


def diagnosed_layers(model) -> list[tuple[int, str, torch.nn.Module]]:
    """(layer, scope, module) of every block child with a registered diagnostic."""
    out = []
    for layer, block in enumerate(getattr(model, "blocks", [])):
        for name, module in block.named_children():
            if _diagnostic_for(module) is not None:
                out.append((layer, f"blocks.{layer}.{name}", module))
                break
    return out


@torch.no_grad()
def model_diagnostics(model, tokens: Tensor) -> list[LayerDiagnostics]:
    """``LayerDiagnostics`` of every diagnosed layer of ``model`` on ``tokens`` ``[b, pos]``
    (at most one forward); empty for models without a registered layer (a Transformer,
    Based)."""
    layers = diagnosed_layers(model)
    if not layers:
        return []
    names = [n for _, scope, module in layers for n in _diagnostic_for(module).hooks(scope)]
    cache = model.run_with_cache(tokens, names_filter=names)[1] if names else {}
    return [_diagnostic_for(module)(model, layer, scope, module, cache, tokens) for layer, scope, module in layers]
