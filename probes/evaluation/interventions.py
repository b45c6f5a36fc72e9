"""Interchange interventions by role, and the association test (Arora et al. 2025).

**Interchange by role** (``interchange_by_role``): the base is a clean AR batch, the
source the same batch with the queried pair's value replaced (``corrupt(·, "value")``:
v → v'). At every component × layer × role (the queried key, its value, the query,
the last position) the base activation is replaced by the source's, and the
intervention counts as carrying the answer when the model then answers v' (IIA:
interchange intervention accuracy, ``ssmlens.probes.interchange``). Where the value's
information travels: at the value position in early layers, at the query once a
layer has moved it there.

**Association test** (``association_test``): where is the key–value association
formed? The base is the batch with the queried key's occurrence in context replaced
by a key found nowhere else (``corrupt(·, "key")``: the query then matches no pair),
and the clean residual stream is patched in at each role, at the input of each
block (``patching_sweep``, restored fraction of p(answer)). At the input of block 0
only the key position differs, so only it restores; at the input of a later block l:

- restoring at the **value** position means blocks below l wrote the key's identity
  into the value's position: the pair is bound at the value, and the query later
  looks it up there — induction (Transformer and Based in the paper; Mamba through
  its short convolution);
- restoring only at the **key** position means no block below l bound the pair:
  block l (or later) combines key and value itself, in its state — the association is
  formed at the last state (H3, Hyena in the paper);
- restoring at the **query** means blocks below l already retrieved the answer at the
  query position.

``association_locus`` reads this at the input of the last block (the deepest point
where a later block can still use it): the role with the largest restored fraction,
if it reaches the threshold. The same patching of the other components (mixer output,
states, short-conv output) says inside which part of a block the pair is bound:
``conv_binding`` is the restored fraction of the short conv's output at the value
position (Arora et al.: Mamba's induction runs through its short convolution).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ssmlens.interp.tasks import corrupt
from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.probes.evaluation.components import model_components
from ssmlens.probes.interchange import interchange_sweep
from ssmlens.probes.patching import patching_sweep

LOCUS_ROLES = ("queried_key", "queried_value", "query")
LOCUS_NAMES = {"queried_value": "value (induction)", "queried_key": "key (last state)",
               "query": "query (retrieved below)"}


def _by_component(sweep: xr.DataArray, components: dict[str, str]) -> dict[str, xr.DataArray]:
    """A sweep ``(metric, hook, layer, role)`` split into ``{component: (metric, layer, role)}``."""
    out = {}
    for label, kind in components.items():
        if kind not in sweep["hook"].values.tolist():
            continue
        part = sweep.sel(hook=kind, drop=True)
        keep = [l for l in part["layer"].values.tolist() if not bool(part.sel(layer=l).isnull().all())]
        part = part.sel(layer=keep)
        part.attrs = {**sweep.attrs, "hook": kind, "component": label,
                      "hook_names": [n for n in sweep.attrs.get("hook_names", []) if n.endswith(kind)]}
        out[label] = part
    return out


def interchange_by_role(model, clean: TaskBatch, roles: list[str], components: list[str], seed: int,
                        progress: bool = False) -> dict[str, xr.DataArray]:
    """IIA (and p_label, logit_diff, kl) per component: ``{label: (metric, layer, role)}``."""
    source = corrupt(clean, "value", seed)  # on the CPU (its sampler is), then on the model's device
    labels = source.tokens_at("queried_value")  # v': corrupt keeps the clean answer token at "answer"
    found = model_components(model, components)
    roles = [r for r in roles if r in clean.roles]
    if not found or not roles:
        return {}
    device = next(model.parameters()).device
    sweep = interchange_sweep(model, clean.to(device), source.to(device), list(found.values()), roles,
                              labels=labels.to(device), progress=progress)
    return _by_component(sweep, found)


def association_test(model, clean: TaskBatch, roles: list[str], components: list[str], seed: int,
                     progress: bool = False) -> dict[str, xr.DataArray]:
    """Restored fraction (and the other patching metrics) of clean activations patched
    into the key-corrupted run, ``{component: (metric, layer, role)}``; "resid" is the
    block inputs the locus is read from, the others say inside which part of a block
    the pair is bound (e.g. the short conv's output at the value position: induction
    through the conv, as Arora et al. find for Mamba)."""
    roles = [r for r in roles if r in clean.roles]
    if not roles or "queried_key" not in clean.roles:
        return {}
    found = model_components(model, ["resid", *components])
    corrupted = corrupt(clean, "key", seed)
    device = next(model.parameters()).device
    sweep = patching_sweep(model, clean.to(device), corrupted.to(device), list(found.values()), roles,
                           direction="denoise", progress=progress)
    return _by_component(sweep, found)


def association_locus(assoc: xr.DataArray | None, threshold: float) -> dict:
    """Where the association is formed (module docstring), read at the last block's input.

    Returns ``locus`` ("value (induction)", "key (last state)", "query (retrieved below)",
    "unclear" when no role reaches ``threshold``, "n/a" without a test), the layer read,
    and the restored fraction per role there (``assoc_<role>``).
    """
    out = {"locus": "n/a", "locus_layer": -1}
    if assoc is None or assoc.sizes.get("layer", 0) == 0:
        return out
    layer = int(max(assoc["layer"].values))
    at = assoc.sel(metric="restored", layer=layer)
    values = {r: float(at.sel(role=r)) for r in LOCUS_ROLES if r in at["role"].values.tolist()}
    out.update({f"assoc_{r}": v for r, v in values.items()}, locus_layer=layer)
    finite = {r: v for r, v in values.items() if np.isfinite(v)}
    if not finite:
        out["locus"] = "unclear"
        return out
    best = max(finite, key=finite.get)
    out["locus"] = LOCUS_NAMES[best] if finite[best] >= threshold else "unclear"
    return out


def conv_binding(assoc: dict[str, xr.DataArray]) -> dict:
    """``assoc_conv_value``: the largest restored fraction of patching the short conv's
    output at the value position (over layers) under key corruption: how much of the
    binding the conv does (it mixes the key into the value's position)."""
    conv = assoc.get("conv")
    if conv is None or "queried_value" not in conv["role"].values.tolist():
        return {}
    values = conv.sel(metric="restored", role="queried_value").values.astype(float)
    finite = values[np.isfinite(values)]
    return {"assoc_conv_value": float(finite.max())} if finite.size else {}


def value_carried(interchange: dict[str, xr.DataArray]) -> dict:
    """IIA of the value position's residual stream at each block input (``iia_value_L<l>``)
    and of the query's (``iia_query_L<l>``): how far up the value's own position still
    decides the answer, and from which block on the query does."""
    resid = interchange.get("resid")
    out: dict = {}
    if resid is None:
        return out
    for layer in resid["layer"].values.tolist():
        for role, tag in (("queried_value", "value"), ("query", "query")):
            if role in resid["role"].values.tolist():
                out[f"iia_{tag}_L{layer}"] = float(resid.sel(metric="iia", layer=layer, role=role))
    return out

