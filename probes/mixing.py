"""One token-mixing view for every mixer: the matrix through which it moves information
between positions, ``[batch, group, q, k]``.

Every sequence mixer of the zoo computes, per group (an attention head, an SSM
channel), an output at query position q as a weighted sum of per-position values:

    mixed[b, q, g] = Σ_k M[b, g, q, k] · values[b, k, g]  (+ per-query columns) (+ skip)

and then its output projection (gate, W_O / out_proj). ``token_mixing(model, tokens,
layer)`` returns that decomposition as a :class:`MixingResult`: the matrix M, what it
mixes, and what is needed to reproduce the mixer's own output from its inputs
(``result.reproduce()`` equals ``result.output``, the mixer's hooked output of the same
forward, to float rounding; ``tests/test_mixing.py`` holds every mixer to 1e-5).

- softmax attention (Transformer): M = softmax(q·kᵀ/√d) per head, from ``hook_q/k``;
- Mamba-1's selective scan (Mamba, MoE-Mamba, B'MOJO's fading memory): the implicit
  ("hidden") attention per channel, α[d, t, s] = C_t · Π_{s<r≤t} exp(Δ_r A) · Δ_s B_s
  (Ali et al., 2024; ``ssmlens.probes.mixing_selective``), values u = ``hook_conv``,
  skip D·u, then y ⊙ silu(z) and out_proj;
- B'MOJO's attention: one softmax per head over the token columns of its window and
  eidetic memory, plus one column per query for its fading token (``column_labels``
  end with "fading"; ``ssmlens.probes.mixing_attention``);
- Mamba-2's SSD scan: the implicit attention per head, α[h, t, s] = (C_t·B_s)·
  exp(Σ_{s<r≤t} Δ_r A_h)·Δ_s with the head's scalar A and its group's B, C
  (``ssmlens.probes.mixing_mamba2``), skip D·u, then the gated RMSNorm and out_proj;
- Based: its linear attention M[t, s] = φ(q_t)·φ(k_s) / (n_t + ε) per head and its
  sliding-window softmax, as 2 × heads groups (``group_labels`` "linear.h0", …,
  "window.h0", …; ``ssmlens.probes.mixing_based``);
- H3: per head, the diagonal SSM's causal Toeplitz matrix times its gates,
  M[t, s] = T[t, s]·(q_t · k̃_s), k̃ the shift SSM's output (``mixing_h3``);
- Hyena: per channel, diag(x^N) T_N ⋯ diag(x^1) T_1, the long filters' Toeplitz
  matrices between their gates (``mixing_hyena``).

Where a matrix is a product of factors (a kernel and gates), ``parts`` holds them.

Views are registered by mixer class (``register_mixing(MixerClass)(fn)``); a module
``ssmlens.probes.mixing_<name>.py`` that registers one is found by itself, so a new mixer
adds one file. ``fn(model, layer, scope, module, tokens) -> MixingResult`` runs the
forward it needs (``model.run_with_cache``) and computes M from the hooked inputs.
The module a block mixes with is looked up in its ``attn`` slot, then ``mixer``, then
any child with a registered view (B'MOJO: its attention, which reads window, memory
and the SSM's fading token; ``token_mixing(..., slot="mixer")`` gives its SSM's view).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from ssmlens.probes.mixing_selective import implicit_attention, selective_mixing

__all__ = ["MixingResult", "find_mixer", "implicit_attention", "mixing_function", "register_mixing",
           "registered_mixers", "selective_mixing", "token_mixing"]

MixingFn = Callable[..., "MixingResult"]
_REGISTRY: dict[type, MixingFn] = {}
_DISCOVERED = False
SLOTS = ("attn", "mixer")  # block attributes tried first, in this order


@dataclass
class MixingResult:
    """A mixer's computation as a token-mixing matrix (module docstring); float64.

    ``matrix [b, group, q, K]``: weight of column k in the output at q. The first L
    columns are the sequence's tokens (``values [b, L, group, e]``); any further
    columns are per-query (``extra_values [b, q, K − L, group, e]``: B'MOJO's fading
    token). ``skip [b, q, group, e]`` is added outside the mixing (Mamba's D·u).
    ``post`` maps the mixed ``[b, q, group, e]`` to the mixer's output ``[b, q, d_model]``;
    ``output`` is that output as the model computed it in the same forward.
    ``group_labels`` name the groups when they differ in kind (Based: linear-attention and
    window heads); ``parts`` holds named factors of the matrix (H3, Hyena: the causal
    Toeplitz matrices of their long convolutions, ``[group, q, k]``, and the gates).
    """

    matrix: Float[Tensor, "batch group q k"]
    values: Float[Tensor, "batch k group e"]
    post: Callable[[Tensor], Tensor]
    output: Float[Tensor, "batch q d_model"]
    group: str  # what a group is: "head" or "channel"
    kind: str  # "softmax_attention", "selective_scan", "bmojo_attention", ...
    hook: str  # the hook whose value ``output`` is
    extra_values: Tensor | None = None
    skip: Tensor | None = None
    column_labels: list[str] | None = None
    group_labels: list[str] | None = None  # names of the groups where they are not all alike (Based)
    parts: dict[str, Tensor] | None = None  # the factors of the matrix (e.g. "kernel": a Toeplitz [group, q, k])

    @property
    def n_tokens(self) -> int:
        return int(self.values.shape[1])

    def mixed(self) -> Float[Tensor, "batch q group e"]:
        """Σ_k M[q, k]·values[k] (+ the per-query columns and the skip)."""
        L = self.n_tokens
        out = einsum(self.matrix[..., :L], self.values, "b g q k, b k g e -> b q g e")
        if self.extra_values is not None:
            out = out + einsum(self.matrix[..., L:], self.extra_values, "b g q x, b q x g e -> b q g e")
        if self.skip is not None:
            out = out + self.skip
        return out

    def reproduce(self) -> Float[Tensor, "batch q d_model"]:
        """The mixer's output recomputed from the matrix (compare with ``output``)."""
        return self.post(self.mixed())

    @property
    def signed(self) -> bool:
        """Whether some weight is negative (SSM and convolution views; not softmax or Based)."""
        return bool((self.matrix < 0).any())

    def view(self, reduce: str | None = None) -> Float[Tensor, "batch q k"]:
        """One ``[b, q, K]`` picture over groups: "mean" (default for nonnegative matrices:
        an average pattern) or "abs_mean" (default when signs differ between groups or
        entries, as for SSM channels and heads, where a mean would cancel)."""
        reduce = reduce or ("abs_mean" if self.signed else "mean")
        if reduce == "mean":
            return self.matrix.mean(1)
        if reduce == "abs_mean":
            return self.matrix.abs().mean(1)
        raise ValueError(f"reduce must be 'mean' or 'abs_mean', got {reduce!r}")

    def labels(self) -> list[str]:
        """Column labels: token positions, then the names of per-query columns."""
        return self.column_labels or [str(i) for i in range(self.matrix.shape[-1])]


def register_mixing(mixer_class: type) -> Callable[[MixingFn], MixingFn]:
    """Decorator: ``fn`` gives the token-mixing view of modules of ``mixer_class`` (and
    its subclasses, unless they have their own)."""
    def decorate(fn: MixingFn) -> MixingFn:
        _REGISTRY[mixer_class] = fn
        return fn

    return decorate


def _discover() -> None:
    """Import every ``ssmlens.probes.mixing_*`` module once (each registers its mixers)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import ssmlens.probes as probes

    for info in pkgutil.iter_modules(probes.__path__):
        if info.name.startswith("mixing_"):
            importlib.import_module(f"{probes.__name__}.{info.name}")
    _DISCOVERED = True


def registered_mixers() -> list[str]:
    _discover()
    return sorted(c.__name__ for c in _REGISTRY)


def mixing_function(module) -> MixingFn | None:
    """The view registered for ``module``'s class or its nearest registered base class."""
    _discover()
    return next((_REGISTRY[c] for c in type(module).__mro__ if c in _REGISTRY), None)


def find_mixer(block, slot: str | None = None) -> tuple[str, torch.nn.Module]:
    """(attribute name, module) of the block's token mixer (module docstring)."""
    if slot is not None:
        module = getattr(block, slot, None)
        if module is None or mixing_function(module) is None:
            raise ValueError(f"{type(block).__name__} has no mixer with a token-mixing view at {slot!r}; "
                             f"registered mixers: {', '.join(registered_mixers())}")
        return slot, module
    for name in SLOTS:
        module = getattr(block, name, None)
        if module is not None and mixing_function(module) is not None:
            return name, module
    for name, module in block.named_children():
        if mixing_function(module) is not None:
            return name, module
    raise ValueError(f"no token-mixing view is registered for any module of {type(block).__name__} "
                     f"({', '.join(type(m).__name__ for m in block.children())}); registered mixers: "
                     f"{', '.join(registered_mixers())}. Add one with register_mixing(MixerClass) in a "
                     "module ssmlens.probes.mixing_<name>.py")


def token_mixing(model, tokens: Tensor, layer: int, slot: str | None = None) -> MixingResult:
    """The token-mixing view of block ``layer`` on ``tokens`` ``[b, pos]`` (module docstring)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"token_mixing needs a model with blocks, got {type(model).__name__}")
    if not -len(blocks) <= int(layer) < len(blocks):
        raise ValueError(f"layer {layer} is out of range: the model has {len(blocks)} blocks")
    layer = int(layer) % len(blocks)
    tokens = model.check_tokens(tokens) if hasattr(model, "check_tokens") else tokens
    name, module = find_mixer(blocks[layer], slot)
    with torch.no_grad():
        return mixing_function(module)(model, layer, f"blocks.{layer}.{name}", module, tokens)
