"""Forwards resumed at a block and a position, from a cached unpatched run.

An intervention at block l, position p cannot change anything before p, nor any
block below l: those values are the unpatched run's. A *resumed forward* computes
only a window of positions ``start … start + length − 1`` of each row (a row is an
example of the cached run), from block l on, reading what it needs of the past from
the cache:

- residual stream: ``blocks.{l}.hook_resid_pre`` over the window (where rows enter);
- Mamba mixer: the SSM state h at ``start − 1`` (``mixer.hook_ssm_state``) and the
  short-conv window, x at ``start − d_conv + 1 … start − 1`` (``mixer.hook_x``);
- Mamba-2 mixer: the state per head at ``start − 1`` (``mixer.hook_ssm_state``); its
  conv runs over x, B and C, and no hook holds the pre-conv B and C (``hook_B`` /
  ``hook_C`` are after the conv), so the conv's input at ``start − d_conv + 1 …
  start − 1`` is rebuilt from the block's cached ``hook_resid_pre`` there (the norm
  without its hooks, then ``in_proj``'s xBC rows: ``Mamba2Mixer._xbc_before``);
- attention: keys and values of every position (``attn.hook_k`` / ``hook_v``); the
  window's own keys are written over them, and a query at t sees keys s ≤ t;
- B'MOJO memory: fading tokens and writes of every position (``memory.hook_fading``
  / ``hook_write``), the innovation errors recomputed from the cached block input;
- Switch MoE: the experts of every position (``moe.hook_expert``), so the
  first-come capacity counts of the window's positions are those of the sequence.

Cheap sequential quantities (innovation running means, B'MOJO memory selection, MoE
capacity) are recomputed over the whole sequence with the window's values written
in, then read at the window: the same arithmetic as the full forward.

Hooks fire during a resumed forward with their documented layouts, the position
axis holding the window's positions only (``pos`` index i is absolute position
``start + i`` of that row); key axes of attention scores and patterns keep every
position (columns are absolute, as in a full forward). ``Resume.start`` gives the
offset to a hook that needs it.

A block supports resuming if it defines ``resume_hooks`` (the hook names, relative
to the block, its resume reads) and its ``forward(resid, resume=None)`` honours a
``Resume``. ``resumable(model)`` says whether a model's blocks all do (Mamba, Mamba-2,
Transformer, B'MOJO and MoE-Mamba blocks do; Based, H3 and Hyena blocks do not, and
patching takes the generic path for them). A ``StateEdit`` carried by the resume
replaces one SSM state per row; the Mamba and Mamba-2 mixers apply it in closed form,
without a scan. With ``read`` (positions per row), ``resume_blocks`` returns the
residual there only, and a last Mamba block (``MambaBlock.forward_read``) computes just
d_conv positions past the last changed input: later reads follow in the same closed form,
so a patch of that block's input needs a window of d_conv positions, not one
reaching the query. A last Transformer block (``TransformerBlock.forward_read``)
computes keys and values only where its input changed and the query, attention
output and MLP only at the positions read (``read_reach`` 0: a patch of its input
needs a window of the patched positions). Either block runs its whole window, hooks
firing as in a forward, when anything listens inside it. (A last Mamba-2 block has no
``forward_read``: it runs its window and is read there.) Resumed Mamba windows scan
with ``ssmlens.models.resume_scan`` on the CPU; Mamba-2 windows with ``ssd_scan`` (or
``selective_scan`` when states are listened to) from the cached state. ``tests/test_resume.py`` holds every resumed forward to the full one.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn


@dataclass(frozen=True)
class StateEdit:
    """The SSM state of mixer ``scope`` (``"blocks.1.mixer."``) replaced at one
    position per row, as an edit of ``hook_ssm_state`` there would (DESIGN §3):
    ``position`` int64 ``[R]`` (absolute, at or before the row's window: the window
    holds the positions read later), ``value`` ``[R, d_inner, d_state]`` (Mamba-2:
    ``[R, head, d_head, d_state]``). The rows
    must enter at that mixer's block, so its inputs are the cached run's and its output
    is the cached one plus the edit's effect (closed form, from the cached Δ, C, z, y:
    ``resume_hook_names(model, edits=True)``).

    A block whose output at t depends on its mixer's output at t alone (a Mamba or
    Mamba-2 block: ``local_after_mixer = True``) needs, when it is the last block, only the
    positions read; any other block needs every position from the edit on."""

    scope: str
    position: Int[Tensor, " row"]
    value: Float[Tensor, "row d_inner d_state"]

    def rows(self, n: int) -> "StateEdit":
        return replace(self, position=self.position[:n], value=self.value[:n])


@dataclass(frozen=True)
class Resume:
    """The window a resumed forward computes, and the cached run it resumes from.

    ex: int64 ``[R]``, the cached example of each row; start: int64 ``[R]``, the
    first position computed; length: positions computed per row (the window of a row
    must lie in ``[0, seq_len)``); cache: full hook name -> unpatched values
    ``[batch, L, ...]``; scope: the name prefix of the module reading it
    (``"blocks.0.mixer."``).
    """

    ex: Int[Tensor, " row"]
    start: Int[Tensor, " row"]
    length: int
    seq_len: int
    cache: Mapping[str, Tensor]
    scope: str = ""
    edit: StateEdit | None = None

    def __post_init__(self) -> None:
        if self.ex.shape != self.start.shape or self.ex.ndim != 1:
            raise ValueError(f"Resume: ex {tuple(self.ex.shape)} and start {tuple(self.start.shape)} must be [rows]")
        if self.start.numel() and (int(self.start.min()) < 0 or int(self.start.max()) + self.length > self.seq_len):
            raise ValueError(f"Resume: windows of {self.length} positions from {self.start.tolist()} leave "
                             f"[0, {self.seq_len})")

    def sub(self, name: str) -> "Resume":
        """The same resume as seen by child module ``name``."""
        return replace(self, scope=f"{self.scope}{name}.")

    def rows(self, n: int) -> "Resume":
        """The first n rows."""
        return replace(self, ex=self.ex[:n], start=self.start[:n], edit=self.edit and self.edit.rows(n))

    @property
    def own_edit(self) -> StateEdit | None:
        """The state edit if it belongs to the module reading this resume."""
        return self.edit if self.edit is not None and self.edit.scope == self.scope else None

    @property
    def positions(self) -> Int[Tensor, "row window"]:
        """Absolute position of every computed slot."""
        return self.start[:, None] + torch.arange(self.length, device=self.start.device)

    def full(self, hook: str) -> Tensor:
        """The cached values of ``scope + hook`` for the rows: ``[R, L, ...]``."""
        return self.cache[self.scope + hook][self.ex]

    def window(self, hook: str) -> Tensor:
        """The cached values of ``scope + hook`` over each row's window: ``[R, length, ...]``."""
        values = self.cache[self.scope + hook]
        return values[self.ex[:, None], self.positions]

    def before(self, hook: str, k: int) -> Tensor:
        """Cached values at positions ``start − k … start − 1``: ``[R, k, ...]``, zero
        before position 0 (the zero padding of a causal conv, the zero initial state)."""
        values = self.cache[self.scope + hook]
        pos = self.start[:, None] - k + torch.arange(k, device=self.start.device)
        out = values[self.ex[:, None], pos.clamp(min=0)]
        if int(self.start.min()) >= k:  # nothing before position 0: no padding
            return out
        keep = (pos >= 0).reshape(*pos.shape, *([1] * (out.ndim - 2)))
        return torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device))

    def span_sum(self, hook: str, after: Int[Tensor, " row"], upto: Int[Tensor, "row q"]) -> Tensor:
        """Σ over after < s ≤ upto of the cached values of ``scope + hook``: fp32
        ``[R, q, ...]`` (zero where upto ≤ after). A difference of float64 prefix sums
        over the sequence (computed once per cached tensor): exact to fp32 for any L."""
        prefix = _prefix_sums(self.cache[self.scope + hook])
        rows = self.ex[:, None]
        total = prefix[rows, upto] - prefix[self.ex, after.clamp(min=0)][:, None]
        total = torch.where((after >= 0)[:, None, *([None] * (total.ndim - 2))], total, prefix[rows, upto])
        keep = (upto > after[:, None]).reshape(*upto.shape, *([1] * (total.ndim - 2)))
        return torch.where(keep, total, 0.0).float()

    def scatter(self, full: Tensor, window: Tensor) -> Tensor:
        """``full [R, L, ...]`` with the window's values ``[R, length, ...]`` written at
        their positions (a new tensor)."""
        out = full.clone()
        out[torch.arange(full.shape[0], device=full.device)[:, None], self.positions] = window.to(out.dtype)
        return out

    def gather(self, full: Tensor) -> Tensor:
        """``full [R, L, ...]`` read at each row's window: ``[R, length, ...]``."""
        return full[torch.arange(full.shape[0], device=full.device)[:, None], self.positions]

    def key_visible(self) -> Tensor:
        """bool ``[R, length, L]``: causal visibility of absolute key s from window slot t."""
        keys = torch.arange(self.seq_len, device=self.start.device)
        return keys[None, None, :] <= self.positions[:, :, None]


def window_conv(conv: nn.Conv1d, before: Float[Tensor, "row k channel"], x: Float[Tensor, "row window channel"]
                ) -> Float[Tensor, "row window channel"]:
    """silu(causal depthwise ``conv`` of x) over a window, its zero padding replaced by
    the conv's input at the k = d_conv − 1 positions before the window (``before``:
    zero before position 0, as ``Resume.before`` gives it)."""
    x_ext = torch.cat([before.to(x.dtype), x], dim=1).transpose(1, 2)
    return F.silu(F.conv1d(x_ext, conv.weight, conv.bias, groups=conv.groups)).transpose(1, 2)


def edit_difference(mixer: nn.Module, resume: "Resume", edit: StateEdit
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """What a mixer's closed-form ``StateEdit`` starts from: (e_p = h' − h at the edited
    position, fp32 ``[R, *state]``; Σ_{p<s≤t} Δ_s over the window, fp32 ``[R, window,
    *delta]``; bool ``[R, window]``, t ≥ p). The mixer's inner values are the cached
    run's, so no hook of them may listen (a ValueError says which)."""
    inner = [n for n in ("x", "z", "conv", "delta", "B", "C", "ssm_state") if getattr(mixer, f"hook_{n}").listened]
    if inner:
        raise ValueError(f"a resumed forward with a StateEdit reads the cached run's {inner}: "
                         "hooks on them cannot be combined with it")
    h_p = resume.cache[resume.scope + "hook_ssm_state"][resume.ex, edit.position]
    decay_sum = resume.span_sum("hook_delta", edit.position, resume.positions)
    return edit.value.float() - h_p.float(), decay_sum, resume.positions >= edit.position[:, None]


_PREFIX: dict[int, tuple[weakref.ref, int, Tensor]] = {}  # id(values) -> (values, version, prefix sums)


def _prefix_sums(values: Float[Tensor, "batch pos *rest"]) -> Float[Tensor, "batch pos *rest"]:
    """float64 cumulative sums over positions, kept while ``values`` lives and is not
    changed in place (its version counter)."""
    key = id(values)
    known = _PREFIX.get(key)
    if known is None or known[0]() is not values or known[1] != values._version:
        ref = weakref.ref(values, lambda _, key=key: _PREFIX.pop(key, None))
        known = (ref, values._version, values.double().cumsum(1))
        _PREFIX[key] = known
    return known[2]


def resumable(model) -> bool:
    """Whether ``resume_blocks`` can run this model: a standard ``LanguageModel``
    (embed -> blocks -> unembed) whose every block supports resuming."""
    from ssmlens.models.lm import LanguageModel

    blocks = getattr(model, "blocks", None)
    return (isinstance(model, LanguageModel) and type(model).forward is LanguageModel.forward
            and type(model).run_blocks is LanguageModel.run_blocks and blocks is not None
            and all(getattr(b, "resume_hooks", None) is not None and hasattr(b, "hook_resid_pre") for b in blocks))


def resume_hook_names(model, edits: bool = False) -> list[str]:
    """Every hook a resumed forward of ``model`` reads from the cache (``edits``: and
    what resuming with a ``StateEdit`` reads: the mixers' y, Δ, C and z)."""
    names = []
    for l, block in enumerate(model.blocks):
        names.append(f"blocks.{l}.hook_resid_pre")
        names.extend(f"blocks.{l}.{h}" for h in block.resume_hooks)
        if edits and "mixer.hook_ssm_state" in block.resume_hooks:
            names.extend(f"blocks.{l}.mixer.hook_{h}" for h in ("ssm_out", "delta", "C", "z"))
    return names


def resume_blocks(
    model,
    cache: Mapping[str, Tensor],
    ex: Int[Tensor, " row"],
    start: Int[Tensor, " row"],
    length: int,
    entry: Int[Tensor, " row"],
    edit: StateEdit | None = None,
    resid: Float[Tensor, "row window d_model"] | None = None,
    read: Int[Tensor, "row q"] | None = None,
) -> Float[Tensor, "row window d_model"] | Float[Tensor, "row q d_model"]:
    """Residual stream after the last block over each row's window.

    Row r enters at block ``entry[r]`` with the cached ``hook_resid_pre`` of that
    block; rows must be sorted by entry (so the rows active at block l are a prefix
    of them). ``cache`` holds ``resume_hook_names(model)`` of the unpatched run
    (``[batch, L, ...]``). Hooks attached to the model fire as in a forward
    (module docstring: window positions only). ``edit``: an SSM state replaced in
    every row (``StateEdit``). ``resid``: the residual each row enters with, instead
    of the cached one (e.g. another input's embedding, for a run that shares the
    cached one's prefix). ``read``: absolute positions; then only the residual there
    is returned, ``[R, q, d_model]`` (positions before a row's window read its first
    position: the caller masks them), and a last block that can (``forward_read``)
    computes only what those positions need; positions after the window may be read
    when that block ``reads_sparsely`` and the window reaches its ``read_reach`` past
    the last patched position.
    """
    if entry.numel() > 1 and bool((entry[1:] < entry[:-1]).any()):
        raise ValueError("resume_blocks: rows must be sorted by entry block")
    some = next(iter(cache.values()))
    seq_len, device = some.shape[1], some.device
    ex, start, entry = ex.to(device), start.to(device), entry.to(device)
    if edit is not None:
        edit = replace(edit, position=edit.position.to(device))
    base = Resume(ex, start, length, seq_len, cache, edit=edit)
    resid_in, resid = resid, None
    for l, block in enumerate(model.blocks):
        n = int((entry <= l).sum())
        if n == 0:
            continue
        scoped = replace(base.rows(n), scope=f"blocks.{l}.")
        n_old = 0 if resid is None else resid.shape[0]
        if n > n_old:
            new = resid_in[n_old:n] if resid_in is not None else replace(
                base, ex=ex[n_old:n], start=start[n_old:n], scope=f"blocks.{l}.", edit=None).window("hook_resid_pre")
            resid = new if resid is None else torch.cat([resid, new.to(resid.dtype)], dim=0)
        if read is not None and l == len(model.blocks) - 1:
            return _read_last(block, resid, scoped, (read.to(device) - start[:, None]).clamp(min=0))
        resid = block(resid, resume=scoped)
    if resid is None:
        raise ValueError("resume_blocks: no row enters any block")
    return resid


def _read_last(block, resid: Tensor, resume: Resume, local: Tensor) -> Tensor:
    """The last block's output ``[R, q, d_model]`` at window offsets ``local`` (≥ 0;
    past the window only for a block whose ``forward_read`` allows it)."""
    if hasattr(block, "forward_read"):
        return block.forward_read(resid, resume, local)
    if bool((local >= resume.length).any()):
        raise ValueError(f"resume_blocks: {type(block).__name__} cannot be read past the window")
    return block(resid, resume=resume)[torch.arange(resid.shape[0], device=resid.device)[:, None], local]
