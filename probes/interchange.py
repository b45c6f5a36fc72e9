"""Interchange interventions (Geiger et al.; pyvene) and distributed alignment search.

A *base* and a *source* input are run; at a hook site and at unit locations given
per example (by role: "the queried value of the base" ← "the queried value of the
source", which may sit at different positions), the base activation is replaced by
the source's — whole, or only its component in a subspace:

    a' = a_base + Q Qᵀ (a_source − a_base)        Q: [D, k] orthonormal columns

over the activation's trailing dims flattened to D. A subspace is a given basis or
a trained rotation (DAS, Geiger et al. 2023): R is an orthogonal D×D matrix
(``torch.nn.utils.parametrizations.orthogonal``) and the intervention swaps the first
k rotated coordinates, i.e. Q = R[:k]ᵀ; ``train_das`` learns R so that the
intervened model outputs the *counterfactual label* (by default the source's answer).
With R = I and k = D this is plain activation patching.

``interchange_sweep`` runs every (hook site, unit) batched (``ssmlens.probes.batched``) and
returns dims ``(metric, hook, layer, role | pos)`` with metrics ``iia`` (interchange
intervention accuracy: argmax = label), ``p_label``, ``logit_diff`` (label vs the
base answer; vs the best other token where they agree), ``kl`` (from the base run's
distribution). ``attrs`` hold ``base_iia`` (label accuracy with no intervention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
import xarray as xr
from torch import Tensor
from torch.nn.utils.parametrizations import orthogonal
from tqdm.auto import tqdm

from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.probes.batched import run_interventions, site_pos_axis
from ssmlens.probes.metrics import AnswerSpec, answer_spec, baseline, nanmean, query_logits, row_metrics
from ssmlens.probes.patching import assemble
from ssmlens.probes.positions import HookSite, PositionSpec, expand_hooks, resolve_positions

_RENAME = {"accuracy": "iia", "p_answer": "p_label", "logit_diff": "logit_diff", "kl": "kl"}


class Rotation(nn.Module):
    """An orthogonal D×D rotation R (rows: the rotated basis), trained by DAS.

    ``init``: "random" (a seeded random orthogonal matrix) or "identity".
    """

    def __init__(self, dim: int, init: str = "random", seed: int = 0):
        super().__init__()
        lin = nn.Linear(dim, dim, bias=False)
        if init == "identity":
            nn.init.eye_(lin.weight)
        elif init == "random":
            g = torch.Generator().manual_seed(seed)
            q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g))
            with torch.no_grad():
                lin.weight.copy_(q * torch.sign(torch.diagonal(r))[None])
        else:
            raise ValueError(f"init must be 'random' or 'identity', got {init!r}")
        self.linear = orthogonal(lin)
        self.dim = dim

    @property
    def matrix(self) -> Tensor:
        return self.linear.weight

    def basis(self, k: int) -> Tensor:
        """Q ``[D, k]``: the first k rotated directions, as orthonormal columns."""
        if not 0 <= k <= self.dim:
            raise ValueError(f"k must be in [0, {self.dim}], got {k}")
        return self.matrix[:k].T


def subspace_basis(subspace: Tensor | tuple[Rotation, int] | None) -> Tensor | None:
    """A basis ``[D, k]`` with orthonormal columns (QR of a given basis), or None."""
    if subspace is None:
        return None
    if isinstance(subspace, tuple):
        rot, k = subspace
        return rot.basis(k).detach()
    q = torch.as_tensor(subspace).detach()
    if q.ndim != 2:
        raise ValueError(f"subspace basis must be [D, k], got shape {tuple(q.shape)}")
    if q.shape[1] == 0:
        return q.float()
    return torch.linalg.qr(q.double())[0].float()


def swap_in_subspace(base: Tensor, source: Tensor, q: Tensor | None) -> Tensor:
    """``base + Q Qᵀ (source − base)`` over the trailing dims flattened (rows on axis 0)."""
    if q is None:
        return source
    d = base[0].numel() if base.ndim > 1 else 1
    if q.shape[0] != d:
        raise ValueError(f"subspace of dimension {q.shape[0]} does not fit activations of size {d}")
    diff = (source - base).reshape(base.shape[0], d)
    q = q.to(diff.dtype)
    return base + ((diff @ q) @ q.T).reshape(base.shape)


def _spec(base: TaskBatch, source: TaskBatch, labels: Tensor | None, query_index: int | None) -> AnswerSpec:
    spec = answer_spec(base, query_index=query_index)
    if labels is None:
        labels = answer_spec(source, query_index=query_index).answer
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(spec.answer.shape)
    alt = torch.where(spec.answer != labels, spec.answer, torch.full_like(labels, -1))
    return AnswerSpec(spec.query, labels, alt)


def interchange_sweep(
    model,
    base: TaskBatch,
    source: TaskBatch,
    hooks: str | Sequence[str],
    units: PositionSpec = "queried_value",
    *,
    source_units: PositionSpec | None = None,
    labels: Tensor | None = None,
    subspace: Tensor | tuple[Rotation, int] | None = None,
    layers: Sequence[int] | None = None,
    query_index: int | None = None,
    chunk_rows: int | None = None,
    memory_mb: float = 32,
    causal: bool = True,
    skip_noop: bool = True,
    resume: bool = True,
    progress: bool = True,
) -> xr.DataArray:
    """Interchange at every (hook site, unit), batched; see the module docstring.

    units: positions written in the base (``ssmlens.probes.positions`` spec, roles looked up
    per base example); source_units: where they are read in the source (default: the
    same spec resolved on the source batch). labels: counterfactual answers
    ``[batch, Q]`` (default: the source's answers). subspace: a basis ``[D, k]`` or
    ``(Rotation, k)``; None swaps whole activations.
    """
    if base.tokens.shape[0] != source.tokens.shape[0]:
        raise ValueError(f"base has {len(base)} examples, source {len(source)}: they are paired one to one")
    sites = expand_hooks(model, hooks, layers)
    b_units = resolve_positions(units, base)
    s_units = resolve_positions(units if source_units is None else source_units, source)
    spec = _spec(base, source, labels, query_index)
    q = subspace_basis(subspace)
    with torch.no_grad():
        base_logp = query_logits(model(base.tokens), spec.query).double().log_softmax(-1)

    def reduce(logits_q, ex):
        return row_metrics(logits_q, spec.answer[ex], spec.alt[ex], base_logp[ex])

    res = run_interventions(
        model, base.tokens, source.tokens, spec, sites, b_units, s_units, reduce,
        combine=None if q is None else (lambda site, b, s: swap_in_subspace(b, s, q)),
        chunk_rows=chunk_rows, memory_mb=memory_mb, causal=causal, skip_noop=skip_noop, resume=resume,
        progress=progress)
    values = {_RENAME[k]: nanmean(v) for k, v in res.rows.items() if k in _RENAME}  # examples without a query: NaN
    base_ref = baseline(res.base)
    attrs = {
        "kind": "interchange",
        "n_examples": len(base),
        "task": base.task,
        "units": repr(units),
        "source_units": repr(units if source_units is None else source_units),
        "hook_names": [s.name for s in sites],
        "subspace_dim": -1 if q is None else int(q.shape[1]),
        "base_iia": base_ref["accuracy"],
        "base_p_label": base_ref["p_answer"],
        **{f"engine_{k}": int(v) for k, v in res.stats.items()},
    }
    return assemble(values, sites, b_units, attrs, metrics=["iia", "p_label", "logit_diff", "kl"])


@dataclass
class DASResult:
    """A trained rotation for one hook site: ``basis`` ``[D, k]`` is its subspace."""

    hook: str
    k: int
    rotation: Rotation
    basis: Tensor
    losses: list[float] = field(default_factory=list)
    iia: float = float("nan")


def train_das(
    model,
    base: TaskBatch,
    source: TaskBatch,
    hook: str,
    units: PositionSpec = "queried_value",
    k: int = 1,
    *,
    source_units: PositionSpec | None = None,
    labels: Tensor | None = None,
    steps: int = 200,
    lr: float = 1e-2,
    batch_size: int | None = None,
    init: str = "random",
    seed: int = 0,
    query_index: int | None = None,
    progress: bool = True,
) -> DASResult:
    """Distributed alignment search: learn R so that swapping the first ``k`` rotated
    coordinates of ``hook`` at ``units`` (base ← source) makes the model output
    ``labels`` (default: the source's answers). Cross-entropy at the base's query
    positions; only R is trained (the model's weights are frozen meanwhile and
    restored). Returns the rotation, its basis, the loss curve and the final IIA on
    the training pairs."""
    sites = expand_hooks(model, hook)
    if len(sites) != 1:
        raise ValueError(f"DAS trains one rotation for one hook site; {hook!r} gives {[s.name for s in sites]}")
    site: HookSite = sites[0]
    b_units = resolve_positions(units, base)
    s_units = resolve_positions(units if source_units is None else source_units, source)
    if len(b_units) != 1:
        raise ValueError(f"DAS needs one unit of positions, got {len(b_units)}: {b_units.labels}")
    b_idx, s_idx = b_units.index[0], s_units.index[0]
    valid = (b_idx >= 0) & (s_idx >= 0)
    spec = _spec(base, source, labels, query_index)
    with torch.no_grad():
        _, cache = model.run_with_cache(source.tokens, names_filter=[site.name])
    src = cache[site.name]
    ax = site_pos_axis(site, src)
    src = src.movedim(ax, 1)
    dim = src[0, 0].numel()
    rot = Rotation(dim, init=init, seed=seed)
    opt = torch.optim.Adam(rot.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = len(base)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    losses: list[float] = []
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for _ in tqdm(range(steps), desc=f"DAS {site.name}", disable=not progress, leave=False):
            ex = torch.randperm(n, generator=g)[:batch_size] if batch_size else torch.arange(n)
            q = rot.basis(k)
            v = valid[ex]
            rows = torch.arange(len(ex))[:, None].expand_as(v)[v]
            bp, sp, se = b_idx[ex][v], s_idx[ex][v], ex[:, None].expand_as(v)[v]

            def hook_fn(act, hook):
                out = act.movedim(ax, 1).clone()
                out[rows, bp] = swap_in_subspace(out[rows, bp], src[se, sp].to(out.dtype), q)
                return out.movedim(1, ax)

            with model.hooks(fwd_hooks=[(site.name, hook_fn)]):
                logits_q = query_logits(model(base.tokens[ex]), spec.query[ex])
            target = spec.answer[ex]
            ok = target >= 0
            loss = F.cross_entropy(logits_q[ok].float(), target[ok])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        for p, req in frozen:
            p.requires_grad_(req)
    basis = rot.basis(k).detach()
    res = interchange_sweep(model, base, source, site.name, units, source_units=source_units, labels=spec.answer,
                            subspace=basis, query_index=query_index, progress=False)
    return DASResult(site.name, k, rot, basis, losses, float(res.sel(metric="iia").values.ravel()[0]))
