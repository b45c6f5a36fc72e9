"""Ablations as hooks: zero / mean / resample of any hook, and named structural ablations.

Every ablation becomes a list of forward hooks attached only for one forward
(``ablated(model, ablation, batch)`` / ``run_ablated``, both through
``model.hooks(...)``, so nothing stays attached even on error).

Value ablations of a hook (optionally only at some positions, along the hook's
``pos`` / ``query_pos`` / ``key_pos`` axis):

- ``zero``: the value is replaced by 0;
- ``mean``: by its mean over the examples of a reference batch (the ablated batch
  itself by default), position by position (TransformerLens' mean ablation);
- ``resample``: by its value on another example: row i takes the value of row
  π(i) of the same batch (π a seeded permutation without fixed points), or of a
  random row of an explicit reference batch. Computed by one extra clean forward.

A hook the model lacks but other models have (``mixer.hook_ssm_state`` on a
Transformer, ``blocks.5.*`` on a 2-layer model) raises ``NotApplicable`` (an ablation
study marks the cell n/a); a misspelt hook raises the unknown-hook error.

Structural ablations (defined precisely in ``ssmlens.probes.ablation_structural``):
``no_conv`` (the short conv reduced to its last tap, so ``hook_conv`` depends on the
current position only), ``clamp_delta`` (Δ := a constant), ``freeze_delta`` (Δ := its
mean over positions), ``no_memory`` (B'MOJO writes := 0), ``no_fading`` (B'MOJO's
fading column removed from the attention softmax), ``drop_head:{l}.{h}`` (that
head's ``hook_z`` := 0), ``drop_expert:{l}.{e}`` (expert e's tokens go to the residual),
``no_window`` (Based), ``no_shift`` (H3), ``truncate_filter[:T]`` (Hyena).

String form (``parse_ablation``): ``NAME[:ARG][@WHERE]``, joined by ``+`` to compose.
For value ablations ARG is the hook name and WHERE the positions (ints or role
names, comma-separated): ``mean:blocks.0.hook_resid_post@query``. For structural
ones WHERE is the layers: ``no_conv@0``, ``clamp_delta:0.01@0,1``, ``drop_head:1.2``,
``no_conv:identity``. ``none`` is the unablated model.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from ssmlens.interp.hook_names import HOOK_DIMS, dims_for, hook_suffix
from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.probes.ablation_base import (
    Ablation, AblationError, BoundAblation, Hooks, HookFn, NotApplicable, _device, _fmt, _tokens,
)
from ssmlens.probes.ablation_structural import (
    STRUCTURAL, ClampDelta, DropExpert, DropHead, FreezeDelta, NoAblation, NoConv, NoFading, NoMemory, Structural,
)


# ---- value ablations of any hook ---------------------------------------------------------


def _pos_axis(name: str, ndim: int) -> int | None:
    dims = dims_for(name, ndim)
    for d in ("pos", "query_pos", "key_pos"):
        if d in dims:
            return dims.index(d)
    return None


def position_mask(batch, positions, length: int) -> Tensor | None:
    """bool ``[b, length]`` True at the positions to ablate; None = everywhere."""
    if positions is None or positions == "all":
        return None
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        return positions
    from ssmlens.probes.linear_sweep import positions_index

    _, index = positions_index(batch if isinstance(batch, TaskBatch) else None, positions, length)
    b = len(_tokens(batch))
    index = index.expand(b, -1) if index.shape[0] == 1 else index
    mask = torch.zeros(b, length + 1, dtype=torch.bool)
    mask.scatter_(1, torch.where(index >= 0, index, length), True)
    return mask[:, :length]


def _derangement(n: int, seed: int) -> Tensor:
    """A seeded permutation with no fixed point (identity for n = 1)."""
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    shift = int(torch.randint(1, n, (1,), generator=g))
    # cycle-shift within the random order: i -> perm[(perm^-1[i] + shift) % n] never maps i to i
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    return perm[(inv + shift) % n]


def check_hook(model, hook: str, label: str) -> None:
    """A hook the model lacks: ``NotApplicable`` when it is a hook of the vocabulary
    (DESIGN §2: another architecture's, or a layer this model does not have), so that a
    study over several models marks the cell n/a; otherwise (a misspelt name) the
    unknown-hook error with the closest names."""
    if hook in model.hook_dict:
        return
    if hook_suffix(hook) in HOOK_DIMS:
        kind = type(model).__name__
        raise NotApplicable(f"{label}: {kind} has no {hook} (a hook of other models, or a layer it does not have)")
    model.check_names([hook])


@torch.no_grad()
def _clean_values(model, tokens: Tensor, hook: str, batch_size: int = 256) -> Tensor:
    parts = []
    for start in range(0, len(tokens), batch_size):
        _, cache = model.run_with_cache(tokens[start:start + batch_size].to(_device(model)),
                                        names_filter=[hook], return_type=None)
        parts.append(cache[hook])
    return torch.cat(parts)


@dataclass
class HookAblation(Ablation):
    """Zero, mean or resample ablation of one hook, at ``positions`` (None = all).

    ``reference``: TaskBatch or tokens the mean / resampled values come from (None:
    the ablated batch). ``positions``: ints, role names, a ``[b, pos]`` bool mask.
    """

    kind: str
    hook: str
    positions: object = None
    reference: object = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in VALUE_KINDS:
            raise AblationError(f"unknown value ablation {self.kind!r}; valid: {', '.join(VALUE_KINDS)}")
        if not isinstance(self.hook, str) or not self.hook:
            raise AblationError(f"{self.kind} ablation needs a hook name, got {self.hook!r}")

    @property
    def label(self) -> str:
        where = ""
        if self.positions is not None and not isinstance(self.positions, Tensor):
            ps = [self.positions] if isinstance(self.positions, (int, str)) else list(self.positions)
            where = "@" + _fmt(ps)
        return f"{self.kind}:{self.hook}{where}"

    def bind(self, model, batch=None) -> BoundAblation:
        check_hook(model, self.hook, self.label)
        if batch is None:
            raise AblationError(f"{self.label} needs the batch it will run on")
        tokens = _tokens(batch)
        mask = position_mask(batch, self.positions, tokens.shape[1])
        ref = tokens if self.reference is None else _tokens(self.reference)
        mean = source = None
        if self.kind == "mean":
            vals = _clean_values(model, ref, self.hook)
            if not vals.is_floating_point():
                raise AblationError(f"mean ablation of {self.hook!r}: its values are {vals.dtype}, not floats")
            mean = vals.mean(0, keepdim=True)
        if self.kind == "resample":
            g = torch.Generator().manual_seed(int(self.seed))
            source = _derangement(len(tokens), self.seed) if self.reference is None else \
                torch.randint(len(ref), (len(tokens),), generator=g)

        def make(rows: slice | None) -> Hooks:
            rows = rows if rows is not None else slice(None)
            m = None if mask is None else mask[rows]
            if self.kind == "zero":
                value = None
            elif self.kind == "mean":
                value = mean
            else:
                value = _clean_values(model, ref[source[rows]], self.hook)

            def hook_fn(act: Tensor, hook) -> Tensor:
                if value is not None and value.shape[1:] != act.shape[1:]:
                    raise AblationError(f"{self.label}: reference values of shape {tuple(value.shape[1:])} per "
                                        f"example do not fit {hook.name!r} of shape {tuple(act.shape[1:])} "
                                        "(a reference batch must have the same sequence length)")
                new = torch.zeros_like(act) if value is None else value.to(act.device, act.dtype).expand_as(act)
                if m is None:
                    return new
                ax = _pos_axis(hook.name, act.ndim)
                if ax is None:
                    raise AblationError(f"{hook.name!r} has no position axis; ablate it at every position")
                if m.shape != (act.shape[0], act.shape[ax]):
                    raise AblationError(f"position mask {tuple(m.shape)} does not fit {hook.name!r} "
                                        f"(batch {act.shape[0]}, positions {act.shape[ax]})")
                shape = [act.shape[0]] + [1] * (act.ndim - 1)
                shape[ax] = act.shape[ax]
                return torch.where(m.to(act.device).reshape(shape), new, act)

            return [(self.hook, hook_fn)]

        return BoundAblation(make)


VALUE_KINDS = ("zero", "mean", "resample")

@dataclass
class Compose(Ablation):
    """Several ablations at once (their hooks in order)."""

    parts: list[Ablation] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "+".join(p.label for p in self.parts) or "none"

    def bind(self, model, batch=None) -> BoundAblation:
        bound = [p.bind(model, batch) for p in self.parts]
        return BoundAblation(lambda rows: [h for b in bound for h in b.fwd_hooks(rows)])



ABLATION_NAMES = tuple(STRUCTURAL) + VALUE_KINDS

# ---- parsing --------------------------------------------------------------------------------

_SPEC_RE = re.compile(r"^([a-z_]+)(?::([^@]+))?(?:@(.+))?$")


def _unknown(name: str) -> AblationError:
    close = difflib.get_close_matches(name, ABLATION_NAMES, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return AblationError(f"unknown ablation {name!r}{hint}; valid: {', '.join(ABLATION_NAMES)}")


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AblationError(f"{what}: expected comma-separated integers, got {text!r}") from None


def _pair(text: str | None, what: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text or "")
    if m is None:
        raise AblationError(f"{what} needs LAYER.INDEX (e.g. {what}:0.1), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _parse_one(spec: str) -> Ablation:
    m = _SPEC_RE.match(spec.strip())
    if m is None:
        raise AblationError(f"cannot parse ablation {spec!r}; expected NAME[:ARG][@WHERE], e.g. no_conv@0, "
                            "clamp_delta:0.01, drop_head:0.1, mean:blocks.0.hook_resid_post@query")
    name, arg, where = m.groups()
    if name in VALUE_KINDS:
        if not arg:
            raise AblationError(f"{spec!r}: {name} needs a hook name ({name}:HOOK[@POSITIONS])")
        positions = None if where is None else [int(p) if p.strip().lstrip("-").isdigit() else p.strip()
                                                 for p in where.split(",")]
        return HookAblation(name, arg.strip(), positions)
    if name not in STRUCTURAL:
        raise _unknown(name)
    if name == "none":
        if arg or where:
            raise AblationError(f"{spec!r}: 'none' takes no argument")
        return NoAblation()
    if name in ("drop_head", "drop_expert"):
        if where:
            raise AblationError(f"{spec!r}: {name} names its layer in the argument ({name}:LAYER.INDEX)")
        return (DropHead if name == "drop_head" else DropExpert)(*_pair(arg, name))
    layers = None if where is None else _ints(where, f"{spec!r} layers")
    if name == "no_conv":
        return NoConv(layers, mode=arg or "last_tap")
    if name == "clamp_delta":
        if arg in (None, "bias"):
            return ClampDelta(layers)
        try:
            return ClampDelta(layers, value=float(arg))
        except ValueError:
            raise AblationError(f"{spec!r}: clamp_delta takes a number (Δ) or 'bias', got {arg!r}") from None
    if name == "truncate_filter":
        return STRUCTURAL[name](layers, length=arg)
    if arg:
        raise AblationError(f"{spec!r}: {name} takes no argument (only @LAYERS)")
    return STRUCTURAL[name](layers)


def parse_ablation(spec) -> Ablation:
    """An Ablation from a string (module docstring), a dict ``{kind: NAME, field: value}``
    (fields of the dataclass: hook, positions, layers, value, mode, layer, head, expert,
    seed) or an Ablation (returned as is)."""
    if isinstance(spec, Ablation):
        return spec
    if isinstance(spec, str):
        parts = [_parse_one(p) for p in spec.split("+")]
        return parts[0] if len(parts) == 1 else Compose(parts)
    if isinstance(spec, dict):
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind is None:
            raise AblationError(f"ablation {spec}: missing field 'kind' (one of {', '.join(ABLATION_NAMES)})")
        if kind in VALUE_KINDS:
            cls, spec = HookAblation, {"kind": kind, **spec}
        elif kind in STRUCTURAL:
            cls = STRUCTURAL[kind]
        else:
            raise _unknown(kind)
        valid = [f.name for f in fields(cls) if f.name != "kind" and f.name != "reference"]
        for key in spec:
            if key not in valid and key != "kind":
                raise AblationError(f"ablation {kind!r}: unknown field {key!r}; valid fields: {', '.join(valid)}")
        return cls(**spec)
    raise AblationError(f"an ablation is a string, a dict or an Ablation, got {type(spec).__name__}")


# ---- running ------------------------------------------------------------------------------------


@contextmanager
def ablated(model, ablation, batch=None, rows: slice | None = None) -> Iterator:
    """``with ablated(model, "no_conv", batch) as m: m(tokens)``: hooks attached only inside."""
    bound = ablation if isinstance(ablation, BoundAblation) else parse_ablation(ablation).bind(model, batch)
    with model.hooks(fwd_hooks=bound.fwd_hooks(rows)) as m:
        yield m


@torch.no_grad()
def run_ablated(model, batch, ablation, batch_size: int | None = None, **forward_kwargs) -> Tensor:
    """Logits ``[b, pos, vocab]`` of the model on ``batch`` (TaskBatch or tokens) under
    ``ablation``, evaluated ``batch_size`` examples at a time (None: all at once)."""
    tokens = _tokens(batch)
    bound = parse_ablation(ablation).bind(model, batch)
    step = batch_size or len(tokens)
    outs = []
    for start in range(0, len(tokens), step):
        rows = slice(start, start + step)
        with model.hooks(fwd_hooks=bound.fwd_hooks(rows)) as m:
            outs.append(m(tokens[rows].to(_device(model)), **forward_kwargs))
    return torch.cat(outs)


__all__ = [
    "ABLATION_NAMES", "Ablation", "AblationError", "BoundAblation", "ClampDelta", "Compose", "DropExpert",
    "DropHead", "FreezeDelta", "HookAblation", "HookFn", "Hooks", "NoAblation", "NoConv", "NoFading", "NoMemory",
    "NotApplicable", "STRUCTURAL", "Structural", "VALUE_KINDS", "ablated", "parse_ablation", "position_mask",
    "run_ablated",
]
