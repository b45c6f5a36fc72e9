"""Stability and memory diagnostics of Mamba-2's mixer (``ssmlens.probes.diagnostics``):
the selective ones, per head.

Mamba-2's Δ is one step size per head ``[b, pos, head]`` (``hook_delta``) and its A one
negative scalar per head, so a head is a channel with a single state direction:
``layer_diagnostics(Δ, A[:, None])`` gives the decay spectrum of exp(Δ_t A_h) over tokens,
each head's horizon 1 / (mean_t Δ_h · |A_h|), A's abscissa max_h A_h, and how much of
log Δ's variance is across tokens rather than across heads.
"""

from __future__ import annotations

import dataclasses

from ssmlens.models.mamba2_mixer import Mamba2Mixer
from ssmlens.probes.diagnostics import LayerDiagnostics, layer_diagnostics, register_diagnostics


@register_diagnostics(Mamba2Mixer)
def mamba2_diagnostics(model, layer: int, scope: str, mixer: Mamba2Mixer, cache, tokens) -> LayerDiagnostics:
    """Per-head diagnostics of the Mamba-2 mixer at ``scope``."""
    found = layer_diagnostics(cache[f"{scope}.hook_delta"], mixer.A[:, None], layer)
    return dataclasses.replace(found, group="head")


mamba2_diagnostics.hooks = lambda scope: [f"{scope}.hook_delta"]
