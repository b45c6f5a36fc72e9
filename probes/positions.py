"""Where to intervene: hook names expanded over layers, positions resolved per example.

Hooks are given as full names (``blocks.1.hook_resid_pre``), as short names expanded
over every layer that has them (``resid_pre``, ``ssm_state``, ``attn.hook_out``,
``memory.hook_write``), or as templates (``blocks.{l}.mixer.hook_B``). Unknown names
raise ``UnknownHookError`` listing the closest valid ones.

Positions ("units" of an intervention) are resolved against a ``TaskBatch``:

==================  ============================================================
spec                units (dim of the result, labels)
==================  ============================================================
``"all"``           one unit per position 0 … L−1 (``pos``, ints)
``5``, ``-1``       that position in every example (``pos``, ints)
``[3, 7]``          one unit per int (``pos``)
``"*"``             one unit holding every position at once (``role``, ``"*"``)
``"queried_key"``   the positions of a role, per example; a role with k columns
                    (``key``: every pair) is one unit of all k positions
``"key[2]"``        column 2 of a role
``(4, 5, 6)``       one unit holding these positions
``["query", 3]``    mixed lists: one unit each (``role``, labels as strings)
==================  ============================================================

A unit is int64 ``[batch, k]`` positions, ``-1`` padded (the convention of
``TaskBatch.roles``); an example whose unit is all ``-1`` is not intervened on.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ssmlens.interp.hook_names import UnknownHookError, hook_layer, hook_suffix
from ssmlens.interp.tasks.base import TaskBatch

PositionSpec = Any  # int | str | tuple[int, ...] | Sequence of those | dict[label, Tensor]

_ROLE_COLUMN = re.compile(r"^(?P<role>[A-Za-z_][A-Za-z0-9_]*)\[(?P<col>-?\d+)\]$")
# Axis names that index sequence positions, in order of preference for patching.
_POS_AXES = ("pos", "query_pos", "key_pos")


# -- hooks ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HookSite:
    """One hook point to intervene on: full name, layer-free kind, block index."""

    name: str  # "blocks.1.mixer.hook_ssm_state"
    kind: str  # "mixer.hook_ssm_state"
    layer: int  # block index; -1 for hooks outside the blocks (hook_embed)


def _site(name: str) -> HookSite:
    layer = hook_layer(name)
    return HookSite(name, hook_suffix(name), -1 if layer is None else layer)


def expand_hooks(model, hooks: str | Sequence[str], layers: Sequence[int] | None = None) -> list[HookSite]:
    """Full hook sites for ``hooks`` (a name or a list, or one comma-separated string).

    A short name matches every hook whose layer-free suffix is the name itself,
    ``hook_<name>`` or ends in ``.<name>`` / ``.hook_<name>``; it must denote a single
    kind (``out`` is ambiguous: mixer, attn or mlp). ``layers`` keeps only those
    blocks. Order: as given, then by layer. Raises ``UnknownHookError`` (with close
    matches) for names the model lacks.
    """
    if isinstance(hooks, str):
        hooks = [h.strip() for h in hooks.split(",") if h.strip()]
    if not hooks:
        raise ValueError("no hooks given")
    names = list(model.hook_dict.keys())
    name_set = set(names)
    n_layers = len(getattr(model, "blocks", ())) or 1 + max((hook_layer(n) or 0) for n in names)
    sites: list[HookSite] = []
    for spec in hooks:
        if spec in name_set:
            full = [spec]
        elif "{l}" in spec:
            full = [spec.format(l=l) for l in range(n_layers)]
            full = [n for n in full if n in name_set] or [spec.format(l=0)]
        else:
            kinds = sorted({hook_suffix(n) for n in names if _matches(hook_suffix(n), spec)})
            if len(kinds) > 1:
                raise ValueError(f"hook {spec!r} is ambiguous: it matches {', '.join(kinds)}; give one of them")
            full = [n for n in names if kinds and hook_suffix(n) == kinds[0]] or [spec]
        unknown = [n for n in full if n not in name_set]
        if unknown:
            raise unknown_hook(unknown[0], names)
        sites.extend(_site(n) for n in full)
    if layers is not None:
        keep = {int(l) for l in layers}
        sites = [s for s in sites if s.layer in keep or s.layer < 0]
    seen: set[str] = set()
    unique = [s for s in sites if not (s.name in seen or seen.add(s.name))]
    if not unique:
        raise ValueError(f"no hook of {list(hooks)} is in layers {list(layers or [])}")
    return unique


def unknown_hook(spec: str, names: Sequence[str]) -> UnknownHookError:
    """The error for a hook spec that names no hook of a model with hooks ``names``:
    close matches among the short names (``ssm_state``), the layer-free kinds
    (``mixer.hook_ssm_state``) and the full names, so ``ssm_stat`` suggests ``ssm_state``."""
    kinds = sorted({hook_suffix(n) for n in names})
    by_short: dict[str, list[str]] = {}
    for kind in kinds:
        by_short.setdefault(kind.rsplit(".", 1)[-1].removeprefix("hook_"), []).append(kind)
    shorts = sorted(short for short, ks in by_short.items() if len(ks) == 1)  # unambiguous ones
    close = difflib.get_close_matches(spec, shorts + kinds + list(names), n=5, cutoff=0.6)
    if not close:  # a misspelt layer index still finds its kind
        close = [n for n in names if n.endswith(hook_suffix(spec))][:5]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownHookError(f"unknown hook name {spec!r}.{hint} (model has {len(names)} hook points; "
                            "see model.hook_dict for all of them)")


def _matches(suffix: str, spec: str) -> bool:
    spec = spec.removeprefix(".")
    return suffix in (spec, f"hook_{spec}") or suffix.endswith((f".{spec}", f".hook_{spec}"))


def position_axis(dims: Sequence[str]) -> int:
    """Index of the sequence axis in a hook's dims (``query_pos`` for patterns)."""
    for name in _POS_AXES:
        if name in dims:
            return list(dims).index(name)
    raise ValueError(f"hook with dims {tuple(dims)} has no position axis to patch")


# -- positions -----------------------------------------------------------------------
@dataclass
class Units:
    """Resolved intervention units: ``index[u]`` is int64 ``[batch, k]``, −1 padded."""

    dim: str  # "pos" (plain positions) or "role"
    labels: list
    index: list[Tensor]

    def __len__(self) -> int:
        return len(self.labels)


def resolve_positions(spec: PositionSpec, batch: TaskBatch | None, seq_len: int | None = None,
                      n: int | None = None) -> Units:
    """Resolve a position spec (module docstring) into per-example units.

    ``batch`` supplies roles and the shape; without one (plain positions only) give
    ``seq_len`` and ``n`` (batch size).
    """
    if batch is not None:
        n, seq_len = batch.tokens.shape
    if n is None or seq_len is None:
        raise ValueError("resolve_positions needs a batch, or seq_len and n")
    if isinstance(spec, dict):
        labels = list(spec)
        index = [_check(torch.as_tensor(v, dtype=torch.int64).reshape(n, -1), seq_len, str(k))
                 for k, v in spec.items()]
        return Units("role", labels, index)
    if isinstance(spec, str) and spec == "all":
        return Units("pos", list(range(seq_len)), [_fixed([p], n) for p in range(seq_len)])
    items = [spec] if isinstance(spec, (int, str, tuple)) else list(spec)
    if not items:
        raise ValueError("empty position spec")
    plain = all(isinstance(i, int) and not isinstance(i, bool) for i in items)
    labels, index = [], []
    for item in items:
        label, idx = _one_unit(item, batch, seq_len, n)
        labels.append(label if plain else str(label))
        index.append(idx)
    return Units("pos" if plain else "role", labels, index)


def _fixed(positions: Sequence[int], n: int) -> Tensor:
    return torch.as_tensor(list(positions), dtype=torch.int64).reshape(1, -1).expand(n, -1).clone()


def _check(idx: Tensor, seq_len: int, what: str) -> Tensor:
    bad = (idx >= seq_len) | (idx < -1)
    if bool(bad.any()):
        raise ValueError(f"positions of {what!r} out of range [0, {seq_len}): {idx[bad][:5].tolist()}")
    return idx


def _wrap(p: int, seq_len: int) -> int:
    q = p + seq_len if p < 0 else p
    if not 0 <= q < seq_len:
        raise ValueError(f"position {p} out of range for sequences of length {seq_len}")
    return q


def _one_unit(item: Any, batch: TaskBatch | None, seq_len: int, n: int) -> tuple[Any, Tensor]:
    if isinstance(item, bool):
        raise TypeError(f"position must be an int, a role name or a tuple of ints, got {item!r}")
    if isinstance(item, int):
        p = _wrap(item, seq_len)
        return p, _fixed([p], n)
    if isinstance(item, tuple):
        ps = [_wrap(int(p), seq_len) for p in item]
        return "+".join(map(str, ps)) or "()", _fixed(ps, n) if ps else torch.full((n, 1), -1, dtype=torch.int64)
    if not isinstance(item, str):
        raise TypeError(f"position must be an int, a role name or a tuple of ints, got {type(item).__name__}")
    if item == "*":
        return "*", _fixed(range(seq_len), n)
    if item == "all":
        raise ValueError('"all" (one unit per position) cannot be mixed with other units; use "*" for one unit '
                         "holding every position")
    if batch is None:
        raise ValueError(f"position {item!r} names a role, which needs a TaskBatch")
    m = _ROLE_COLUMN.match(item)
    if m:
        pos = batch.role(m["role"])
        col = int(m["col"])
        if not -pos.shape[1] <= col < pos.shape[1]:
            raise ValueError(f"role {m['role']!r} has {pos.shape[1]} columns; no column {col}")
        return item, _check(pos[:, col : col + 1 if col != -1 else None].clone(), seq_len, item)
    return item, _check(batch.role(item).clone(), seq_len, item)


def position_labels(batch: TaskBatch) -> list[str]:
    """A readable label per position: the role that every example has there
    (``key[3]``, ``eos[0]``, ``query``), else the token of example 0."""
    n, seq_len = batch.tokens.shape
    labels: list[str | None] = [None] * seq_len
    order = ["query", "answer", "bos", "eos", "key", "value", "last"]
    order += sorted(r for r in batch.roles if r not in order)
    for role in order:
        if role not in batch.roles:
            continue
        pos = batch.roles[role]
        for col in range(pos.shape[1]):
            p = pos[:, col]
            if bool((p >= 0).all()) and bool((p == p[0]).all()) and labels[int(p[0])] is None:
                labels[int(p[0])] = role if pos.shape[1] == 1 else f"{role}[{col}]"
    return [lab if lab is not None else f"t{int(batch.tokens[0, i])}" for i, lab in enumerate(labels)]
