"""Attribution patching: a first-order estimate of every patch from one forward and one
backward pass (Nanda 2023; Syed et al. 2023, "Attribution patching outperforms
automated circuit discovery").

For a metric M read on the base run, patching site h at positions P changes M by

    ΔM ≈ Σ_{p ∈ P} Σ_{other axes} ∂M/∂a_h[p] · (a_h^source[p] − a_h^base[p])

with the gradient taken on the base run (the corrupted run for ``denoise``). It is
exact when M is linear in the activation (e.g. the logit difference of a model that
is linear after the site). Gradients come from TransformerLens backward hooks on
every chosen site, so a sweep over all hooks, layers and positions costs one forward
and one backward. The gradient at ``mixer.hook_ssm_state`` is the total derivative
(the edit propagates, DESIGN §3); B'MOJO's ``memory.hook_write`` is a hard threshold,
so no gradient reaches it and its attributions are 0 (patch it with ``patching_sweep``).

Metric: ``logit_diff`` (against ``alt``; where ``alt`` is the best other token it is
the base run's best other token, held fixed), ``p_answer`` or ``logp_answer``,
averaged over examples. Result dims ``(metric, hook, layer, pos | role)`` with
metric ``delta`` (estimated ΔM) and ``restored``, the estimated restored fraction
(M_base + ΔM − M_corr) / (M_clean − M_corr) of the same metric, comparable to
``patching_sweep``'s ``restored`` (for ``p_answer``) and ``restored_logit_diff``, and
NaN under the same rule (``ssmlens.probes.metrics``: the gap of the clean and corrupted
batch means below ``min_gap``); ``attrs["restored_excluded"]`` counts the examples left
without it (all or none: the denominator is the batch means' gap, also per example).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import xarray as xr
from torch import Tensor

from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.probes.batched import site_pos_axis
from ssmlens.probes.metrics import excluded_count, min_gap, nanmean, query_logits, restored_fraction
from ssmlens.probes.patching import Direction, SweepSetup, assemble
from ssmlens.probes.positions import PositionSpec, position_labels

ATTRIBUTION_METRICS = ("logit_diff", "p_answer", "logp_answer")


def attribution_patching(
    model,
    clean: TaskBatch,
    corrupted: TaskBatch,
    hooks: str | Sequence[str],
    positions: PositionSpec = "all",
    *,
    direction: Direction = "denoise",
    metric: str = "logit_diff",
    layers: Sequence[int] | None = None,
    query_index: int | None = None,
    alt_tokens: Tensor | None = None,
    per_example: bool = False,
) -> xr.DataArray:
    """Estimate every (hook site, unit) patch at once; see the module docstring.

    Arguments as ``patching_sweep``; ``metric`` is what is differentiated. Returns
    a DataArray ``(metric, hook, layer, pos | role)`` (``+ batch`` with per_example,
    then ``delta`` per example and ``restored`` against batch-mean references).
    """
    if metric not in ATTRIBUTION_METRICS:
        raise ValueError(f"metric must be one of {ATTRIBUTION_METRICS}, got {metric!r}")
    setup = SweepSetup(model, clean, corrupted, hooks, positions, direction, layers, query_index, alt_tokens)
    sites, spec = setup.sites, setup.spec
    names = sorted({s.name for s in sites})
    with torch.no_grad():
        _, src_cache = model.run_with_cache(setup.source.tokens, names_filter=names)

    acts: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}

    def save_act(act, hook):
        acts[hook.name] = act.detach()

    def save_grad(grad, hook):
        grads[hook.name] = grad.detach()

    def needs_grad(x, hook):  # frozen weights: still differentiate w.r.t. activations
        return x if x.requires_grad else x.detach().requires_grad_(True)

    fwd = [(n, save_act) for n in names]
    if "hook_embed" in model.hook_dict:
        fwd.insert(0, ("hook_embed", needs_grad))
    with torch.enable_grad(), model.hooks(fwd_hooks=fwd, bwd_hooks=[(n, save_grad) for n in names]):
        logits_q = query_logits(model(setup.base.tokens), spec.query)
        per_ex = _differentiable_metric(logits_q, spec.answer, spec.alt, metric)
        per_ex.sum().backward()
    model.zero_grad(set_to_none=True)

    n = len(clean)
    delta = torch.zeros(len(sites), len(setup.units), n, dtype=torch.float64)
    for i, site in enumerate(sites):
        act = acts[site.name]
        grad = grads.get(site.name, torch.zeros_like(act))  # no gradient path (hook_write): 0
        ax = site_pos_axis(site, act)
        contrib = (grad.double() * (src_cache[site.name].double() - act.double())).movedim(ax, 1)
        contrib = contrib.flatten(2).sum(-1) if contrib.ndim > 2 else contrib  # [B, pos]
        for u, idx in enumerate(setup.units.index):
            valid = idx >= 0
            picked = contrib.gather(1, idx.clamp(min=0))
            delta[i, u] = (picked * valid).sum(1)

    # examples without a query have no metric: NaN, skipped by the means
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    has_query = (spec.answer >= 0).any(-1)
    m_base = torch.where(has_query, per_ex.detach().double(), nan)
    clean_rows, corr_rows = setup.refs["clean"][metric], setup.refs["corrupted"][metric]
    ref_clean, ref_corr = nanmean(clean_rows), nanmean(corr_rows)
    gap = min_gap(clean_rows, corr_rows)  # the denominator is the batch means' gap in both modes
    if per_example:
        restored = restored_fraction(m_base + delta, ref_clean, ref_corr, gap)
        values = {"delta": delta, "restored": restored}
    else:
        d = nanmean(torch.where(has_query, delta, nan))
        values = {"delta": d, "restored": restored_fraction(nanmean(m_base) + d, ref_clean, ref_corr, gap)}
    attrs = {
        "kind": "attribution_patching",
        "metric": metric,
        "direction": direction,
        "n_examples": n,
        "task": clean.task,
        "positions": repr(positions),
        "hook_names": [s.name for s in sites],
        "base_metric": float(nanmean(m_base)),
        "clean_metric": float(ref_clean),
        "corrupted_metric": float(ref_corr),
        "restored_min_gap": gap,
        "restored_excluded": excluded_count(clean_rows, corr_rows, gap, per_example=False),
    }
    if setup.units.dim == "pos":
        labels = position_labels(setup.base)
        attrs["pos_labels"] = [labels[p] for p in setup.units.labels]
    return assemble(values, sites, setup.units, attrs, per_example, metrics=["delta", "restored"])


def _differentiable_metric(logits_q: Tensor, answer: Tensor, alt: Tensor, metric: str) -> Tensor:
    """Per-example metric ``[B]`` (mean over valid queries) with gradients."""
    valid = answer >= 0
    ans = answer.clamp(min=0)[..., None]
    if metric == "logit_diff":
        with torch.no_grad():  # the contrast token is chosen on the base run and held fixed
            best = logits_q.scatter(-1, ans, float("-inf")).argmax(-1)
        contrast = torch.where(alt >= 0, alt, best)
        per_q = logits_q.gather(-1, ans)[..., 0] - logits_q.gather(-1, contrast[..., None])[..., 0]
    else:
        logp = logits_q.float().log_softmax(-1).gather(-1, ans)[..., 0]
        per_q = logp.exp() if metric == "p_answer" else logp
    count = valid.sum(-1).clamp(min=1)
    return (per_q * valid).sum(-1) / count
