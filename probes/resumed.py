"""Patch rows run as resumed forwards: only the blocks and positions a patch can change.

A row (site × unit × example) whose first changed position is p and whose site is in
block l cannot change anything before p nor below l (causality). It is computed by
``ssmlens.models.resume.resume_blocks``: from block l's cached ``hook_resid_pre``, over the
window of positions p … q (q: the example's last metric position), with the SSM
states, conv windows, attention keys and B'MOJO / MoE bookkeeping before p read from
the unpatched run. Rows are sorted by window length and entry block and stacked in
chunks, so one resumed forward serves rows of every site, unit and example whose
windows are about as long; within a chunk every window has the chunk's length and
is moved left where it would pass the end of the sequence (an earlier start is still
exact: it only recomputes unchanged positions).

A patch of ``mixer.hook_ssm_state`` at a single position runs as a
``ssmlens.models.resume.StateEdit`` instead of a hook: the mixer adds the closed-form effect
C_t·exp(A·Σ_{p<s≤t} Δ_s)·(h' − h) to its cached output, without a scan; when the
patched block is a last Mamba or Mamba-2 block (``local_after_mixer``), only the query positions
are computed. Multi-position state units go through the hook (the scan re-run with
the edit), as does every other hook.

A patch of the last block's ``hook_resid_pre`` when that block is a Mamba block
(``read_reach``) runs a window ending d_conv − 1 positions after the last patched
position: ``MambaBlock.forward_read`` computes that span and reads the queries after
it in closed form. Such rows share forwards only with each other (a hook on the
block's mixer would make it compute whole windows). A last Transformer block
(``TransformerBlock.forward_read``, ``read_reach`` 0) computes new keys and values
where its input changed and everything else at the queries only: a patch of its input
runs a window of the patched positions. Rows patching inside the last block (whose
hooks make it run whole windows) share forwards only with each other; a patch there of
a position-local hook (``local_hooks``: after a Transformer's attention) starts at the
first query it patches, and one patching no query runs no forward at all.

Logits are read at each row's query positions only (``resume_blocks``' ``read``),
unembedded and reduced a batch of forwards at a time; a query before its row's window
cannot be changed by the patch and keeps the unpatched run's logits.

``resumed_source`` runs the source of a patch the same way: from the base run's
cache, from where the two token sequences first differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ssmlens.models.resume import StateEdit, resume_blocks
from ssmlens.probes.metrics import AnswerSpec
from ssmlens.probes.positions import HookSite

STATE, STATE_HOOK = "mixer.hook_ssm_state", "hook_ssm_state"


def run_resumed(
    model,
    todo: Sequence[tuple[int, int, Tensor, Tensor]],
    sites: Sequence[HookSite],
    cache: Mapping[str, Tensor],
    src_cache,
    b_index: Sequence[Tensor],
    s_index: Sequence[Tensor],
    spec: AnswerSpec,
    base_q: Tensor,
    base_cache,
    reduce: Callable,
    combine: Callable | None,
    rows: dict[str, Tensor],
    window_bytes: float,
    memory_mb: float,
    chunk_rows: int | None,
    progress: bool,
    make_writer: Callable,
) -> int:
    """Run every (site index, unit index, example ids, first changed positions) item of
    ``todo`` as resumed forwards and write its metrics into ``rows [site, unit, batch]``.

    cache: ``ssmlens.models.resume.resume_hook_names`` of the base run (``[batch, L, ...]``);
    window_bytes: bytes per row and window position of a forward (sets the chunk size
    within ``memory_mb`` unless ``chunk_rows`` is given). Returns the number of
    forwards run.
    """
    if not todo:
        return 0
    L = next(iter(cache.values())).shape[1]
    site = torch.cat([torch.full((t[2].numel(),), t[0]) for t in todo])
    unit = torch.cat([torch.full((t[2].numel(),), t[1]) for t in todo])
    ex = torch.cat([t[2] for t in todo])
    first = torch.cat([t[3] for t in todo])
    length = (spec.last_position[ex] - first + 1).clamp(min=1)
    entry = torch.tensor([s.layer for s in sites])[site]
    # Single-position SSM state patches: a StateEdit (closed form, no scan), per site.
    editable = torch.cat([torch.full((t[2].numel(),), _editable(sites[t[0]], b_index[t[1]], cache)) for t in todo])
    b_index, s_index = stack_units(b_index), stack_units(s_index)
    n_blocks = len(model.blocks)
    # A patch of a last block's hook that is position-local there (``local_hooks``: after a
    # Transformer's attention) changes the positions it patches only: the window starts at
    # the first query among them (the writer leaves positions before the window alone);
    # with none, nothing read changes.
    local = [f"blocks.{n_blocks - 1}.{h}" for h in getattr(model.blocks[-1], "local_hooks", ())]
    late = ~editable & torch.tensor([s.name in local for s in sites], dtype=torch.bool)[site]
    if bool(late.any()):
        query = spec.query[ex[late]]
        patched = _unit_positions(b_index, unit[late], ex[late])  # -1 padded
        hit = ((query[:, :, None] == patched[:, None, :]) & (query >= 0)[:, :, None]).any(-1)
        first[late] = torch.where(hit, query, L).min(1).values
        length = (spec.last_position[ex] - first + 1).clamp(min=1)
    # A state edit in a last block that mixes no positions after its SSM: only the queries are read.
    if getattr(model.blocks[-1], "local_after_mixer", False):
        late = editable & (entry == n_blocks - 1)
        query = spec.query[ex[late]]
        first[late] = torch.where(query >= first[late][:, None], query, L).min(1).values
        length = (spec.last_position[ex] - first + 1).clamp(min=1)
    # Patches of the last block's input, when that block reads its queries sparsely:
    # windows that end read_reach positions after the last patched position.
    sparse = _sparse_reads(model, sites, site, ~editable, cache)
    if bool(sparse.any()):
        patched = _unit_positions(b_index, unit[sparse], ex[sparse]).amax(1)
        reach = model.blocks[-1].read_reach
        length[sparse] = torch.minimum(length[sparse], (patched - first[sparse] + 1 + reach).clamp(min=1))
    # Rows patching inside the last block (after its input) attach hooks there, which makes
    # it compute whole windows: they share forwards only with each other.
    inner = ~editable & ~sparse & (entry == n_blocks - 1)
    groups = [(None, torch.nonzero(~editable & ~sparse & ~inner)[:, 0]), (None, torch.nonzero(inner)[:, 0]),
              (None, torch.nonzero(sparse)[:, 0])]
    groups += [(i, torch.nonzero(editable & (site == i))[:, 0]) for i in torch.unique(site[editable]).tolist()]
    forwards = 0
    # Query residuals wait to be unembedded and reduced together (a few calls, not one
    # per forward), up to memory_mb / 64 of logits: with a large vocabulary, larger
    # batches of logits ran slower (out of cache), with a small one fewer calls win.
    pending = _Pending(model, base_q, reduce, rows, memory_mb)
    # Rows moved past every query (a last-block patch before them all) change nothing read:
    # they keep the unpatched logits without a forward.
    dead = first >= L
    if bool(dead.any()):
        none = torch.nonzero(dead)[:, 0]
        resid = cache["blocks.0.hook_resid_pre"]
        shape = (none.numel(), spec.query.shape[1])
        pending.add(site[none], unit[none], ex[none], resid.new_zeros(*shape, resid.shape[-1]),
                    torch.zeros(shape, dtype=torch.bool, device=resid.device))
    for edit_site, members in groups:
        members = members[~dead[members]]
        if not members.numel():
            continue
        # Sort by window length, then entry block: chunks of similar windows.
        order = members[torch.argsort(length[members] * (int(entry.max()) + 1) + entry[members], stable=True)]
        chunks = _split(length[order], window_bytes, memory_mb, chunk_rows)
        forwards += len(chunks)
        for lo, hi in tqdm(chunks, desc="patching (resumed)", unit="chunk", disable=not progress, leave=False):
            sel = order[lo:hi]
            sel = sel[torch.argsort(entry[sel], stable=True)]  # rows active in block l are a prefix
            Ls = int(length[sel].max())
            start = torch.minimum(first[sel], torch.full_like(first[sel], L - Ls))
            if edit_site is None:
                hooks = _writers(site[sel], unit[sel], ex[sel], start, sites, src_cache, b_index, s_index, combine,
                                 make_writer)
                edit = None
            else:
                hooks = []
                edit = _state_edit(sites[edit_site], unit[sel], ex[sel], b_index, s_index, src_cache, base_cache,
                                   combine)
            query = spec.query[ex[sel]]
            with torch.no_grad(), attached(model, hooks):
                resid_q = resume_blocks(model, cache, ex[sel], start, Ls, entry[sel], edit=edit, read=query)
            inside = (query >= 0) & (query >= start[:, None])
            pending.add(site[sel], unit[sel], ex[sel], resid_q, inside.to(resid_q.device))
    pending.flush()
    return forwards


class _Pending:
    """Query residuals of resumed forwards, unembedded and reduced in batches into
    ``rows [site, unit, batch]``; queries outside a row's window keep ``base_q``."""

    def __init__(self, model, base_q: Tensor, reduce: Callable, rows: dict[str, Tensor], memory_mb: float):
        self.model, self.base_q, self.reduce, self.rows = model, base_q, reduce, rows
        self.budget = memory_mb / 64 * 2**20 / (4 * base_q.shape[-1])  # query rows whose fp32 logits fit
        self.parts: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] = []
        self.size = 0

    def add(self, site: Tensor, unit: Tensor, ex: Tensor, resid_q: Tensor, inside: Tensor) -> None:
        self.parts.append((site, unit, ex, resid_q, inside))
        self.size += resid_q.shape[0] * resid_q.shape[1]
        if self.size >= self.budget:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        site, unit, ex, resid_q, inside = (torch.cat(p) for p in zip(*self.parts))
        self.parts, self.size = [], 0
        logits = self.model.unembed_resid(resid_q)
        logits = torch.where(inside[..., None], logits, self.base_q[ex].to(logits.dtype))
        for name, v in self.reduce(logits, ex).items():
            self.rows[name][site, unit, ex] = v.to(device=self.rows[name].device, dtype=self.rows[name].dtype)


def _sparse_reads(model, sites: Sequence[HookSite], site: Tensor, candidates: Tensor,
                  cache: Mapping[str, Tensor]) -> Tensor:
    """bool ``[rows]``: rows patching the last block's ``hook_resid_pre`` (among
    ``candidates``) when that block can be read past a short window (``read_reach``:
    ``MambaBlock.forward_read``, from the mixer's cached y, Δ, C, z; or
    ``TransformerBlock.forward_read``, from the cached keys and values). Only such rows
    may share a forward: a hook in the block would make it compute whole windows."""
    last = len(model.blocks) - 1
    # What the block's forward_read needs cached (a Mamba block: the mixer's y, Δ, C, z).
    needs = getattr(model.blocks[last], "read_hooks", ("mixer.hook_ssm_out",))
    cached = all(f"blocks.{last}.{h}" in cache for h in needs)
    if getattr(model.blocks[last], "read_reach", None) is None or not cached:
        return torch.zeros_like(candidates)
    hit = torch.tensor([s.layer == last and s.name == f"blocks.{last}.hook_resid_pre" for s in sites])
    return candidates & hit[site]


def _editable(site: HookSite, unit_index: Tensor, cache: Mapping[str, Tensor]) -> bool:
    """Whether patches of ``site`` at this unit run as a ``StateEdit``: one position
    of an SSM state whose mixer's ``hook_ssm_out`` is cached."""
    return site.kind == STATE and unit_index.shape[1] == 1 and site.name.replace(STATE_HOOK, "hook_ssm_out") in cache


@contextmanager
def attached(model, fwd_hooks: Sequence[tuple[str, Callable]]):
    """``model.hooks(fwd_hooks=...)`` touching only the named hook points: the hooks
    are added at a new context level and removed from those points on exit, errors
    included. (TransformerLens' context resets every hook point of the model on exit:
    about 1 ms per resumed forward here.)"""
    model.check_names([name for name, _ in fwd_hooks])
    model.context_level += 1
    level, points = model.context_level, []
    try:
        for name, fn in fwd_hooks:
            points.append(model.hook_dict[name])
            points[-1].add_hook(fn, dir="fwd", level=level)
        yield model
    finally:
        for point in points:
            point.remove_hooks("fwd", including_permanent=False, level=level)
        model.context_level -= 1


def _state_edit(site: HookSite, unit: Tensor, ex: Tensor, b_index, s_index, src_cache, base_cache,
                combine: Callable | None) -> StateEdit:
    """The patch of single-position units of ``hook_ssm_state`` as a ``StateEdit``."""
    bp, sp = _unit_positions(b_index, unit, ex)[:, 0], _unit_positions(s_index, unit, ex)[:, 0]
    value = src_cache[site.name][ex, sp]
    if combine is not None:
        value = combine(site, base_cache[site.name][ex, bp], value)
    return StateEdit(site.name[: -len(STATE_HOOK)], bp, value)


def _split(length: Tensor, window_bytes: float, memory_mb: float, chunk_rows: int | None
           ) -> list[tuple[int, int]]:
    """[lo, hi) chunks of rows sorted by window length, each within the memory budget
    at its longest window (or ``chunk_rows`` rows). As few chunks as the budget
    allows, evened out: the largest chunk is about as small as that many chunks can
    make it (no one-row tail chunk paying a whole forward's overhead)."""
    lengths = length.tolist()
    if chunk_rows:
        return [(lo, min(lo + chunk_rows, len(lengths))) for lo in range(0, len(lengths), chunk_rows)]
    cap = max(1.0, memory_mb * 2**20 / window_bytes)  # row-positions a forward may hold
    chunks = _greedy(lengths, cap)
    lo, hi = 1.0, cap  # the smallest budget giving as few chunks, to 1/256 of the cap
    for _ in range(8 if len(chunks) > 1 else 0):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if len(_greedy(lengths, mid)) <= len(chunks) else (mid, hi)
    return _greedy(lengths, hi)


def _greedy(lengths: list[int], budget: float) -> list[tuple[int, int]]:
    """[lo, hi) chunks of ascending ``lengths``, each as long as rows × its longest
    window stays within ``budget`` (one row at least)."""
    chunks, lo, n = [], 0, len(lengths)
    while lo < n:
        # rows × longest grows with hi: the last hi within the budget, by bisection
        a, b = lo + 1, n
        while a < b:
            mid = (a + b + 1) // 2
            a, b = (mid, b) if (mid - lo) * lengths[mid - 1] <= budget else (a, mid - 1)
        chunks.append((lo, a))
        lo = a
    return chunks


def _writers(site, unit, ex, start, sites, src_cache, b_index, s_index, combine, make_writer) -> list:
    """One forward hook per site of the chunk, writing its rows at window offsets."""
    hooks = []
    for i in torch.unique(site).tolist():
        mine = torch.nonzero(site == i)[:, 0]
        b_idx, s_idx = _unit_positions(b_index, unit[mine], ex[mine]), _unit_positions(s_index, unit[mine], ex[mine])
        hooks.append((sites[i].name, make_writer(sites[i], mine, ex[mine], b_idx, s_idx, src_cache[sites[i].name],
                                                 combine, offset=start[mine])))
    return hooks


def stack_units(index: Sequence[Tensor]) -> Tensor:
    """Units' positions ``[k_u]`` per example as one int64 ``[unit, batch, max k]``, -1 padded."""
    k = max(i.shape[1] for i in index)
    return torch.stack([torch.nn.functional.pad(i, (0, k - i.shape[1]), value=-1) for i in index])


def _unit_positions(stacked: Tensor, unit: Tensor, ex: Tensor) -> Tensor:
    """int64 ``[rows, k]``: the positions of unit ``unit[r]`` in example ``ex[r]``, -1 padded."""
    return stacked[unit, ex]


def _query_logits(model, resid: Tensor, local: Tensor, valid: Tensor, base_q: Tensor) -> Tensor:
    """Logits ``[R, Q, vocab]`` at the window offsets ``local`` of the queries; queries
    before the window (or missing) keep ``base_q``."""
    inside = (valid & (local >= 0)).to(resid.device)
    idx = local.clamp(0, resid.shape[1] - 1).to(resid.device)[..., None].expand(-1, -1, resid.shape[-1])
    logits = model.unembed_resid(resid.gather(1, idx))
    return torch.where(inside[..., None], logits, base_q.to(logits.dtype))


def resumed_source(model, cache: Mapping[str, Tensor], base_tokens: Tensor, source_tokens: Tensor,
                   names: Sequence[str], axes: Mapping[str, int], spec: AnswerSpec, base_q: Tensor,
                   read: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The source run as a forward resumed from the base run where their tokens first
    differ, up to the last position read: ``(logits at spec.query [batch, Q, vocab],
    {name: values [batch, L, ...]})``. Before the first difference the values are the
    base run's (the same tokens); after the window they are the base run's too, and
    never read. ``axes``: position axis per name; ``read``: int64 ``[batch]``, the last
    source position a patch reads (-1: none).
    """
    n, L = base_tokens.shape
    differs = (source_tokens != base_tokens).cpu()  # positions are bookkept on the CPU
    first = torch.where(differs.any(1), differs.int().argmax(1), L)  # L: the same tokens
    end = torch.maximum(torch.where(spec.last_position >= 0, spec.last_position, L - 1), read)
    length = end - first.clamp(max=end) + 1
    full = {name: cache[name].movedim(axes[name], 1).clone() for name in names}
    logits_q = base_q.clone()
    seen: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> Tensor:
        seen[hook.name] = act
        return act

    with torch.no_grad():
        embedded = model.embed_tokens(source_tokens)
        for ex in _length_groups(length):
            Ls = int(length[ex].max())
            start = torch.minimum(first[ex], torch.full_like(ex, L - Ls))
            window = start[:, None] + torch.arange(Ls)
            with attached(model, [(name, keep) for name in names]):
                resid = resume_blocks(model, cache, ex, start, Ls, torch.zeros_like(ex),
                                      resid=embedded[ex[:, None], window])
            # Positions before the first difference are the base run's exactly (recomputing
            # them would only add rounding noise, and make no-op patches look like changes).
            fresh = window >= first[ex, None]
            rows, at = ex[:, None].expand_as(window)[fresh], window[fresh]
            for name in names:
                full[name][rows, at] = seen[name].movedim(axes[name], 1)[fresh].to(full[name].dtype)
            query = spec.query[ex]
            logits_q[ex] = _query_logits(model, resid, query - start[:, None], query >= 0, base_q[ex]).to(
                logits_q.dtype)
    return logits_q, {name: v.movedim(1, axes[name]) for name, v in full.items()}


def _length_groups(length: Tensor) -> list[Tensor]:
    """Example ids in one or two groups by window length: two when padding every window
    to the longest would cost a quarter more positions than splitting."""
    order = torch.argsort(length)
    s = length[order]
    n, longest = s.numel(), int(s[-1])
    cost = torch.arange(1, n) * s[:-1] + (n - torch.arange(1, n)) * longest  # split before i
    if n > 1 and float(cost.min()) * 1.25 < n * longest:
        i = int(cost.argmin()) + 1
        return [order[:i], order[i:]]
    return [order]
