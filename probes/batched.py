"""Many interventions in one forward: (hook, unit, example) rows stacked along the batch.

The engine behind ``patching_sweep`` and ``interchange_sweep``. Every intervention
(a hook site × a unit of positions) applied to every base example is a *row*: a
copy of the base example whose activation at that hook is overwritten, at the
unit's positions, by the source run's activation (or a function of both, e.g. a
subspace swap). Rows are stacked along the batch axis and run in chunks sized to a
memory budget; in each chunk one forward hook per hook site writes the rows that
target it and leaves the others alone, so a row computes exactly what a forward with
that single patch computes (``patching_sweep_reference`` checks this).

Work is skipped only where the result is known exactly:

- *no-op rows*: the new value equals the base value at every position of the unit
  (e.g. positions before the corrupted token, where clean and corrupted runs agree):
  the row is the base run itself, whose metrics are copied.
- *causality* (``causal=True``, every ssmlens model): positions after an example's
  last metric position cannot change its metrics, so patches there are not run.
  (Sequences are not cut short; every model is prefix-consistent, tests/test_every_model.py,
  so this is a cost choice, not a correctness one.)
- *resuming at a block and a position* (``ssmlens.probes.resumed``, ``ssmlens.models.resume``; every
  model in ``models/`` whose blocks can: Mamba, Mamba-2, Transformer, B'MOJO,
  MoE-Mamba; not Based, H3, Hyena): a row whose site is
  in block l and whose first changed position is p computes only positions p … q
  (q: the example's last metric position) of blocks l and above, from the base
  run's cached residual, SSM states, conv windows, attention keys/values and B'MOJO /
  MoE bookkeeping. Rows are sorted by window length and stacked in chunks. A patch of
  ``mixer.hook_ssm_state`` at one position is a ``StateEdit``: its effect
  (h' − h carried by Ā) is added in closed form, without a scan, and in a last Mamba
  or Mamba-2 block only the query positions are computed. The source run itself is resumed from
  the base run where their tokens first differ. In a last Mamba block a patch of its
  input computes only d_conv positions from the patch on (``MambaBlock.forward_read``:
  past them the change is a state difference, carried to the queries in closed form).
- *source rows*: a patch that makes a block's whole input (``hook_resid_pre``) the
  source run's — the unit covers every position where the two differ — makes the
  rest of the forward the source run's (blocks see nothing else), whose metrics are
  copied (only with resuming, when the source run's query logits are known).
- *resuming at a block only* (the fallback): rows whose site is outside the blocks
  (``hook_embed``, ``hook_pos_embed``), every row of a non-causal sweep
  (``causal=False``) or of a model that already has hooks attached (they would see
  windows), and every row of a LanguageModel whose blocks cannot resume
  (no ``resume_hooks``) start from the base run's ``blocks.{l}.hook_resid_pre``
  (from the tokens for sites outside the blocks) and run the whole sequence; models
  that are not standard LanguageModels run the full forward. ``resume=False`` turns
  both kinds of resuming off. Only the metric positions are unembedded.

``EngineResult.stats``: ``rows`` run (``rows_resumed`` of them at a position),
``rows_source`` copied from the source run, ``rows_total`` and ``forwards``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import weakref

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ssmlens.interp.hook_names import dims_for
from ssmlens.models.resume import resumable as position_resumable
from ssmlens.models.resume import resume_hook_names
from ssmlens.probes.metrics import AnswerSpec, query_logits
from ssmlens.probes.positions import HookSite, Units, position_axis
from ssmlens.probes.resumed import resumed_source, run_resumed, stack_units

Reduce = Callable[[Tensor, Tensor], dict[str, Tensor]]  # (logits [R, Q, V], example ids [R]) -> {name: [R]}
Combine = Callable[[HookSite, Tensor, Tensor], Tensor]  # (site, base values, source values) -> new values


@dataclass
class EngineResult:
    rows: dict[str, Tensor]  # name -> [n_sites, n_units, batch]
    base: dict[str, Tensor]  # name -> [batch]: the base run without intervention
    stats: dict[str, int] = field(default_factory=dict)


def resumable(model) -> bool:
    """Whether the model is a standard LanguageModel (embed -> blocks -> unembed) whose
    forward can be resumed at a block from a cached ``hook_resid_pre``."""
    try:
        from ssmlens.models.lm import LanguageModel
    except ImportError:  # pragma: no cover - models is part of the distribution
        return False
    return (isinstance(model, LanguageModel) and type(model).forward is LanguageModel.forward
            and type(model).run_blocks is LanguageModel.run_blocks
            and all(hasattr(b, "hook_resid_pre") for b in model.blocks))


def run_interventions(
    model,
    base_tokens: Tensor,
    source_tokens: Tensor,
    spec: AnswerSpec,
    sites: Sequence[HookSite],
    base_units: Units,
    source_units: Units,
    reduce: Reduce,
    *,
    prepare: Callable[[Tensor, Tensor | None], None] | None = None,
    combine: Combine | None = None,
    chunk_rows: int | None = None,
    memory_mb: float = 32,
    causal: bool = True,
    skip_noop: bool = True,
    resume: bool = True,
    progress: bool = True,
) -> EngineResult:
    """Run every (site, unit) intervention on every base example; see module docstring.

    base_tokens / source_tokens: int64 ``[batch, L]`` (example i of the source pairs
    with example i of the base). base_units / source_units: the positions written in
    the base and read from the source, paired column by column. ``reduce`` turns the
    logits at ``spec.query`` into per-row metrics; ``prepare(base_q, source_q)``, when
    given, first receives the unpatched runs' logits at ``spec.query`` (source_q None
    if the source run was cut shorter), so references need no extra forward.
    ``combine(site, base, source)`` -> the values written (default: the source
    values). Returns rows ``[site, unit, batch]``.
    """
    n = base_tokens.shape[0]
    if source_tokens.shape[0] != n:
        raise ValueError(f"base has {n} examples, source {source_tokens.shape[0]}")
    if len(base_units) != len(source_units):
        raise ValueError("base and source units differ in number")
    b_index, s_index = _pair_units(base_units, source_units, spec.last_position if causal else None)
    # Hooks already on the model would see resumed windows, not whole sequences: a
    # model someone is hooking runs whole sequences.
    pos_resume = resume and causal and position_resumable(model) and not any(
        hp.listened for hp in model.hook_dict.values())
    resume = resume and resumable(model)
    names = sorted({s.name for s in sites})
    starts = sorted({s.layer for s in sites if s.layer >= 0}) if resume else []
    resid_names = [f"blocks.{l}.hook_resid_pre" for l in starts]
    # A StateEdit, or a last Mamba block read sparsely, reads the mixers' y, Δ, C and z.
    last_input = f"blocks.{len(model.blocks) - 1}.hook_resid_pre" if resume else None
    resid_names += resume_hook_names(model, edits=any(s.kind == "mixer.hook_ssm_state" or s.name == last_input
                                                      for s in sites)) if pos_resume else []

    with torch.no_grad():
        if pos_resume:  # a standard LanguageModel: unembed the queries only
            last = f"blocks.{len(model.blocks) - 1}.hook_resid_post"
            _, base_cache = model.run_with_cache(base_tokens, names_filter=sorted(set(names + resid_names + [last])),
                                                 return_type=None)
            base_q = model.unembed_resid(query_logits(base_cache[last], spec.query))
        else:
            base_logits, base_cache = model.run_with_cache(base_tokens, names_filter=sorted(set(names + resid_names)))
            base_q = query_logits(base_logits, spec.query)
        if torch.equal(source_tokens, base_tokens):
            src_q, src_cache = base_q, base_cache
        elif pos_resume and source_tokens.shape == base_tokens.shape and all(s.layer >= 0 for s in sites):
            # The source shares the base's tokens up to a point: resume it there.
            axes = {s.name: site_pos_axis(s, base_cache[s.name]) for s in sites}
            read = stack_units(s_index).amax(dim=(0, 2))  # the last source position each example reads
            src_q, src_cache = resumed_source(model, base_cache.cache_dict, base_tokens, source_tokens, names, axes,
                                              spec, base_q, read)
        else:
            src_logits, src_cache = model.run_with_cache(source_tokens, names_filter=names)
            src_q = query_logits(src_logits, spec.query) if src_logits.shape[1] == base_tokens.shape[1] else None
        if prepare is not None:
            prepare(base_q, src_q)
        base = reduce(base_q, torch.arange(n))
        rows = {k: v[None, None].expand(len(sites), len(base_units), n).clone() for k, v in base.items()}
        # A patch making a block's whole input the source's makes the rest the source run.
        source = reduce(src_q, torch.arange(n)) if pos_resume and src_q is not None and combine is None else None
        n_source = 0

        # Rows: (site, unit, example) whose intervention changes something.
        todo = []  # (site index, unit index, example ids, first changed positions)
        same_units = all(torch.equal(b, s) for b, s in zip(b_index, s_index))
        stacked = stack_units(b_index)  # unit batch k
        for i, site in enumerate(sites):
            ax = site_pos_axis(site, base_cache[site.name])
            b_act, s_act = base_cache[site.name].movedim(ax, 1), src_cache[site.name].movedim(ax, 1)
            if skip_noop and same_units and combine is None and b_act.shape == s_act.shape:
                # units read where they write: one comparison per position answers them all
                pos_diff = _position_differs(b_act, s_act).cpu()  # batch L
                hit = pos_diff[torch.arange(n)[None, :, None], stacked.clamp(min=0)] & (stacked >= 0)
                firsts = torch.where(hit, stacked, b_act.shape[1]).min(-1).values  # unit batch
                if source is not None and site.kind == "hook_resid_pre":
                    whole = _covers_every_change(pos_diff, stacked) & hit.any(-1)  # unit batch
                    n_source += _write_source_rows(rows, source, i, whole)
                    firsts = torch.where(whole, b_act.shape[1], firsts)
                found = [(u, torch.nonzero(f < b_act.shape[1])[:, 0]) for u, f in enumerate(firsts)]
                todo.extend((i, u, ex, firsts[u, ex]) for u, ex in found if ex.numel())
                continue
            for u in range(len(base_units)):
                ex, first = _changed(site, b_act, s_act, b_index[u], s_index[u], combine, skip_noop)
                if ex.numel():
                    todo.append((i, u, ex, first))
        resumed = [t for t in todo if pos_resume and sites[t[0]].layer >= 0]
        rest = [t[:3] for t in todo if not (pos_resume and sites[t[0]].layer >= 0)]
        order = {l: k for k, l in enumerate(starts)}
        rest.sort(key=lambda t: (order.get(sites[t[0]].layer, -1), t[0], t[1]))
        row_bytes = _auto_rows(model, base_tokens[:1], 1.0, per_row=True) if todo else 1
        chunks = _chunks(rest, sites, order, chunk_rows or max(1, int(memory_mb * 2**20 // row_bytes)))

        stats = {"rows": sum(int(t[2].numel()) for t in todo), "rows_total": len(sites) * len(base_units) * n,
                 "rows_resumed": sum(int(t[2].numel()) for t in resumed), "rows_source": n_source}
        # model.hooks() (_run_chunk) and probes.resumed.attached (run_resumed) detach their
        # hooks on exit, errors included.
        for start, items in tqdm(chunks, desc="patching", unit="chunk", disable=not progress, leave=False):
            _run_chunk(model, start, items, sites, base_tokens, base_cache, src_cache, b_index,
                       s_index, spec, reduce, combine, rows)
        n_resumed = run_resumed(model, resumed, sites, base_cache.cache_dict, src_cache, b_index, s_index, spec,
                                base_q, base_cache, reduce, combine, rows, row_bytes / base_tokens.shape[1], memory_mb,
                                chunk_rows, progress, _writer)
        stats["forwards"] = len(chunks) + n_resumed
    return EngineResult(rows, base, stats)


def _position_differs(base: Tensor, source: Tensor) -> Tensor:
    """bool ``[batch, L]``: base and source values ``[batch, L, ...]`` differ somewhere
    at that position. As ``(base != source).any(...)`` (a subtraction and a max ran 2.4×
    faster here than ``!=`` and ``any``), except that equal infinities count as a
    change: such a row is run, not skipped, so the result stays exact."""
    if not base.is_floating_point():
        return (base != source).reshape(*base.shape[:2], -1).any(-1)
    gap = (base - source).reshape(*base.shape[:2], -1).abs_().amax(-1)
    return (gap != 0) | gap.isnan()


def _covers_every_change(pos_diff: Tensor, stacked: Tensor) -> Tensor:
    """bool ``[unit, batch]``: the unit's positions (``stacked [unit, batch, k]``, -1
    padded) include every position where base and source differ (``pos_diff [batch, L]``)."""
    L = pos_diff.shape[1]
    in_unit = torch.zeros(*stacked.shape[:2], L + 1, dtype=torch.bool)
    in_unit.scatter_(2, torch.where(stacked >= 0, stacked, L), True)  # slot L: padding
    return ~(pos_diff[None] & ~in_unit[..., :L]).any(-1)


def _write_source_rows(rows: dict[str, Tensor], source: dict[str, Tensor], site: int, whole: Tensor) -> int:
    """Write the source run's metrics into ``rows[name][site]`` where ``whole [unit,
    batch]`` (the patched block input is the source's: the rest of the forward is the
    source run's); returns how many rows."""
    unit, ex = torch.nonzero(whole, as_tuple=True)
    for name, v in source.items():
        rows[name][site, unit, ex] = v[ex].to(rows[name].dtype)
    return int(unit.numel())


def _pair_units(base: Units, source: Units, last: Tensor | None) -> tuple[list[Tensor], list[Tensor]]:
    """Per unit, int64 [B, k] base and source positions, paired; with ``last`` (causal),
    base positions after an example's last metric position are dropped (-1)."""
    b_out, s_out = [], []
    for b, s in zip(base.index, source.index):
        if b.shape != s.shape:
            raise ValueError(f"base unit {tuple(b.shape)} and source unit {tuple(s.shape)} differ in shape")
        keep = (b >= 0) & (s >= 0)
        if last is not None:
            keep &= b <= last[:, None]
        b_out.append(torch.where(keep, b, -1))
        s_out.append(torch.where(keep, s, -1))
    return b_out, s_out


def site_pos_axis(site: HookSite, act: Tensor) -> int:
    """The sequence axis of a hook's value (1 for hooks without a known layout)."""
    dims = dims_for(site.name, act.ndim)
    return 1 if dims[:1] == ("dim_0",) else position_axis(dims)


def _changed(site: HookSite, b_act: Tensor, s_act: Tensor, b_idx: Tensor, s_idx: Tensor,
             combine: Combine | None, skip_noop: bool = True) -> tuple[Tensor, Tensor]:
    """Example ids whose values at the unit would change (b_act/s_act: pos axis at 1;
    with ``skip_noop=False``: every example with a position in the unit), and the
    first position where each of them changes (int64, both ``[n]``)."""
    valid = b_idx >= 0
    rows = torch.arange(b_idx.shape[0])[:, None].expand_as(b_idx)
    if skip_noop:
        old = b_act[rows[valid], b_idx[valid]]
        new = s_act[rows[valid], s_idx[valid]]
        if combine is not None:
            new = combine(site, old, new)
        hit = (new != old).flatten(1).any(1) if new.ndim > 1 else new != old
    else:
        hit = torch.ones(int(valid.sum()), dtype=torch.bool)
    far = b_act.shape[1]
    first = torch.full((b_idx.shape[0],), far, dtype=torch.long).scatter_reduce_(
        0, rows[valid], torch.where(hit, b_idx[valid], far), "amin")
    ex = torch.nonzero(first < far)[:, 0]
    return ex, first[ex]


_ROW_BYTES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _auto_rows(model, one: Tensor, memory_mb: float, per_row: bool = False) -> int:
    """Rows per forward within ``memory_mb``: 3× the bytes of every hooked value of
    one example (an upper bound: states and patterns included); measured once per
    model and length (``per_row``: return those bytes instead). On a CPU, chunks of a
    few tens of MB ran fastest (they stay in cache: benchmarks/patching.py), hence
    the small default budget."""
    known = _ROW_BYTES.setdefault(model, {})
    if one.shape[1] not in known:
        with torch.no_grad():
            _, cache = model.run_with_cache(one)
        known[one.shape[1]] = 3 * sum(v.numel() * v.element_size() for v in cache.values()) or 1
    if per_row:
        return known[one.shape[1]]
    return max(1, int(memory_mb * 2**20 // known[one.shape[1]]))


def _chunks(todo, sites, order, max_rows: int) -> list[tuple[int, list]]:
    """Split the rows into chunks of at most ``max_rows`` with a single start layer
    (-1: from the tokens). Each chunk item is (site index, unit index, example ids)."""
    chunks: list[tuple[int, list]] = []
    cur: list = []
    cur_start, size = None, 0
    for i, u, ex in todo:
        start = sites[i].layer if sites[i].layer in order else -1
        pos = 0
        while pos < ex.numel():
            if cur and (start != cur_start or size >= max_rows):
                chunks.append((cur_start, cur))
                cur, size = [], 0
            cur_start = start
            take = ex[pos : pos + max_rows - size]
            cur.append((i, u, take))
            size += take.numel()
            pos += take.numel()
    if cur:
        chunks.append((cur_start, cur))
    return chunks


def _run_chunk(model, start, items, sites, tokens, base_cache, src_cache, b_index, s_index, spec, reduce,
               combine, rows) -> None:
    ex = torch.cat([t[2] for t in items])
    owner = torch.cat([torch.full((t[2].numel(),), k) for k, t in enumerate(items)])
    hooks = []
    for i in sorted({t[0] for t in items}):
        local = [(k, t) for k, t in enumerate(items) if t[0] == i]
        sel = torch.cat([torch.nonzero(owner == k)[:, 0] for k, _ in local])
        b_idx = _cat_padded([b_index[t[1]][t[2]] for _, t in local])
        s_idx = _cat_padded([s_index[t[1]][t[2]] for _, t in local])
        hooks.append((sites[i].name, _writer(sites[i], sel, ex[sel], b_idx, s_idx, src_cache[sites[i].name], combine)))
    with model.hooks(fwd_hooks=hooks):
        logits_q = _forward_rows(model, tokens[ex], start, base_cache, ex, spec.query[ex])
    got = reduce(logits_q, ex)
    for k, (i, u, e) in enumerate(items):
        mine = owner == k
        for name, v in got.items():
            rows[name][i, u, e] = v[mine].to(rows[name].dtype)


def _cat_padded(parts: list[Tensor]) -> Tensor:
    """Concatenate int64 [n_i, k_i] position tensors along rows, -1 padding to max k."""
    k = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, k - p.shape[1]), value=-1) for p in parts])


def _writer(site: HookSite, sel: Tensor, ex: Tensor, b_idx: Tensor, s_idx: Tensor, src: Tensor,
            combine: Combine | None, offset: Tensor | None = None):
    """A forward hook writing source values into rows ``sel`` at ``b_idx``; in a
    resumed forward (``offset``: each row's first computed position, ``[len(sel)]``)
    at ``b_idx − offset``, positions before the window being left alone."""
    valid = b_idx >= 0
    if offset is not None:
        b_idx = b_idx - offset[:, None]
        valid &= b_idx >= 0
    r = sel[:, None].expand_as(b_idx)[valid]
    e = ex[:, None].expand_as(b_idx)[valid]
    bp, sp = b_idx[valid], s_idx[valid]
    ax = site_pos_axis(site, src)
    src = src.movedim(ax, 1)

    def hook(act: Tensor, hook) -> Tensor:
        out = act.movedim(ax, 1).clone()
        if out.shape[2:] != src.shape[2:]:
            raise ValueError(f"{site.name}: source values {tuple(src.shape)} do not fit the base's "
                             f"{tuple(out.shape)} (sequences of different lengths?)")
        new = src[e, sp].to(out.dtype)
        if combine is not None:
            new = combine(site, out[r, bp], new)
        out[r, bp] = new
        return out.movedim(1, ax)

    return hook


def _forward_rows(model, tokens: Tensor, start: int, base_cache, ex: Tensor, query: Tensor) -> Tensor:
    """Logits ``[R, Q, vocab]`` at ``query`` for the rows, resumed at block ``start``."""
    if not resumable(model):
        return query_logits(model(tokens), query)
    if start >= 0:
        resid = base_cache[f"blocks.{start}.hook_resid_pre"][ex]
    else:
        resid = model.embed_tokens(tokens)
        start = 0
    for block in model.blocks[start:]:
        resid = block(resid)
    idx = query.clamp(min=0)[..., None].expand(-1, -1, resid.shape[-1])
    return model.unembed_resid(resid.gather(1, idx))
