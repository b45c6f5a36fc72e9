"""TransformerLens' ``ActivationCache``, taught the structure of ssmlens models.

TransformerLens' cache helpers assume a HookedTransformer: ``cfg.normalization_type``,
norms called ``ln1``/``ln2``, residual writes called ``attn_out``/``mlp_out``, ``W_O``
as a ``[head, d_head, d_model]`` tensor. Our models have none of that by name, so
this subclass reads what it needs from the model itself (duck typing, no model
import):

- ``model.blocks`` (the layers), ``model.ln_final`` (the final norm), ``model.W_U``
  ``[d_model, vocab]`` and ``model.tokens_to_residual_directions`` (``LanguageModel``);
- a block's norms: its direct children with a ``hook_scale`` (``models/norm.py``), in
  the order they are applied; TransformerLens' ``ln1``/``ln2`` are the first/second
  (``ssmlens.interp.hook_names.TL_NORMS``);
- a block's residual writes: ``block.resid_writers`` (pairs of kind, hook name under
  the block; kind "attn" for what mixes positions, "mlp" for what does not) when the
  block declares it, else the first of ``attn.hook_out`` / ``memory.hook_fading`` /
  ``mixer.hook_out`` that exists, then ``mlp.hook_out`` and ``moe.hook_expert_out``.
  ``decompose_resid`` checks that they add up to ``hook_resid_post − hook_resid_pre``
  wherever both are cached, so an inference that does not fit a block is an error,
  never a silent wrong answer.

Our norm weights are not folded into the next layer (TransformerLens folds them by
default), so ``apply_ln_to_stack`` multiplies by the norm's weight after dividing by
the cached scale (and centering, for LayerNorm); the LayerNorm bias, a constant that
no component owns, is left out. Hence ``logit_attrs(decompose_resid(), tokens)``
sums to the logits of ``tokens`` for RMS-normed models (Mamba, B'MOJO, MoE-Mamba) and
to the logits minus ``ln_final.bias @ W_U`` for LayerNorm ones (Transformer).

Methods that need what our models do not have raise ``NotImplementedError`` saying
what is missing (``stack_head_results`` on a model without attention heads,
TransformerLens' neuron and SSM helpers).
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from einops import einsum, rearrange
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache as _TLActivationCache
from transformer_lens.utilities import Slice, get_act_name

from ssmlens.interp.hook_names import tl_name_candidates

# Residual writes inferred for a block that does not declare ``resid_writers``: the
# first token mixer found, then every position-wise layer found.
_MIXERS = ("attn.hook_out", "memory.hook_fading", "mixer.hook_out")
_POSITIONWISE = ("mlp.hook_out", "moe.hook_expert_out")


class CacheKeyError(KeyError):
    """A cache lookup that found nothing; the message says why and lists close keys."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ActivationCache(_TLActivationCache):
    """``run_with_cache``'s cache: TransformerLens' ActivationCache whose lookups and
    residual-stream helpers understand ssmlens models (module docstring)."""

    # -- structure read from the model ------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.model.blocks)

    def _block(self, layer: int) -> Any:
        return self.model.blocks[layer]

    def block_norms(self, layer: int) -> list[str]:
        """Names of block ``layer``'s norm modules, in the order the block applies them."""
        return [name for name, m in self._block(layer).named_children() if hasattr(m, "hook_scale")]

    def resid_writers(self, layer: int) -> list[tuple[str, str]]:
        """(kind, full hook name) of everything block ``layer`` adds to the residual
        stream, in order; kind is "attn" (mixes positions) or "mlp" (does not)."""
        block = self._block(layer)
        declared = getattr(block, "resid_writers", None)
        if declared is None:
            owned = {n for n, m in block.named_modules() if n}
            mixer = next((h for h in _MIXERS if h in owned), None)
            declared = ([("attn", mixer)] if mixer else []) + [("mlp", h) for h in _POSITIONWISE if h in owned]
        return [(kind, f"blocks.{layer}.{hook}") for kind, hook in declared]

    # -- lookups ----------------------------------------------------------------
    def __getitem__(self, key: Any) -> Tensor:
        """A cached value by full name, or by TransformerLens' shorthand
        (``cache["resid_pre", 0]``, ``cache["scale", 1, "ln1"]``), which also finds our
        names: ``cache["ssm_state", 0]`` is ``blocks.0.mixer.hook_ssm_state`` and
        ``blocks.0.ln1.hook_scale`` is ``blocks.0.norm.hook_scale`` on a Mamba
        (``ssmlens.interp.hook_names.tl_name_candidates``)."""
        if isinstance(key, str) and key in self.cache_dict:
            return self.cache_dict[key]
        name = self._resolve(key)
        if name in self.cache_dict:
            return self.cache_dict[name]
        found = [n for n in tl_name_candidates(name, self._norms_or_none) if n in self.cache_dict]
        if len(found) == 1:
            return self.cache_dict[found[0]]
        if found:
            raise CacheKeyError(f"cache key {key!r} is ambiguous: it may mean {', '.join(found)}; give the full name")
        keys = list(self.cache_dict)
        close = difflib.get_close_matches(name, keys, n=5, cutoff=0.6) or [
            k for k in keys if k.endswith("." + name.rsplit(".", 1)[-1])][:5]
        hint = f" Close keys: {', '.join(close)}." if close else ""
        raise CacheKeyError(
            f"{name!r} (from key {key!r}) is not in this cache of {len(keys)} activations.{hint} "
            "If the model has it, cache it: run_with_cache(..., names_filter=[...]).")

    def _resolve(self, key: Any) -> str:
        if isinstance(key, str):
            return get_act_name(key)
        if isinstance(key, tuple) and key:
            if len(key) > 1 and isinstance(key[1], int) and key[1] < 0:
                key = (key[0], self.n_layers + key[1], *key[2:])
            return get_act_name(*key)
        raise CacheKeyError(f"cache keys are names or (name, layer[, sublayer]) tuples, got {key!r}")

    def _norms_or_none(self, layer: int) -> list[str]:
        return self.block_norms(layer) if 0 <= layer < self.n_layers else []

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> "ActivationCache":
        sliced = super().apply_slice_to_batch_dim(batch_slice)
        return ActivationCache(sliced.cache_dict, self.model, has_batch_dim=sliced.has_batch_dim)

    # -- norms --------------------------------------------------------------------
    def _norm_at(self, layer: int, mlp_input: bool) -> tuple[Any, str]:
        """(norm module, its name) that reads the residual stream entering ``layer``
        (``n_layers``: the final norm); ``mlp_input``: the block's second norm."""
        if layer == self.n_layers:
            if mlp_input:
                raise ValueError("mlp_input=True needs a block's layer index, not the final norm's (n_layers)")
            return self.model.ln_final, "ln_final"
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} out of range: 0 … {self.n_layers} (n_layers = the final norm)")
        norms = self.block_norms(layer)
        i = 1 if mlp_input else 0
        if i >= len(norms):
            raise NotImplementedError(
                f"blocks.{layer} ({type(self._block(layer)).__name__}) has {len(norms)} norm(s) {norms}, "
                f"no {'second norm before an MLP (TransformerLens ln2): mlp_input=True' if mlp_input else 'norm'} "
                "cannot be applied")
        return getattr(self._block(layer), norms[i]), f"blocks.{layer}.{norms[i]}"

    def apply_ln_to_stack(self, residual_stack: Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice: Any = None, batch_slice: Any = None, has_batch_dim: bool = True,
                          recompute_ln: bool = False) -> Tensor:
        """What each component of ``residual_stack`` ``[component, *batch_and_pos, d_model]``
        contributes to the output of the norm reading the stream entering ``layer``
        (None, −1 or n_layers: the final norm; ``mlp_input``: the block's second norm):
        centered (LayerNorm), divided by that norm's cached ``hook_scale`` and times
        its weight, so the components add up to the norm's output (minus a LayerNorm's
        bias). ``recompute_ln`` at the final norm applies ``ln_final`` to each
        component with its own statistics (the logit lens), as TransformerLens does."""
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        batch_slice = batch_slice if isinstance(batch_slice, Slice) else Slice(batch_slice)
        layer = self.n_layers if layer is None or layer == -1 else layer
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        norm, norm_name = self._norm_at(layer, mlp_input)
        if recompute_ln and layer == self.n_layers:
            return torch.stack([norm(component) for component in residual_stack])
        scale = pos_slice.apply(self[f"{norm_name}.hook_scale"], dim=-2)
        if self.has_batch_dim:
            scale = batch_slice.apply(scale)
        if isinstance(norm, torch.nn.LayerNorm):
            residual_stack = residual_stack - residual_stack.mean(-1, keepdim=True)
        out = residual_stack / scale
        weight = getattr(norm, "weight", None)
        return out * weight if weight is not None else out

    # -- residual stream ----------------------------------------------------------
    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: Any = None, mlp_input: bool = False, return_labels: bool = False
                          ) -> Tensor | tuple[Tensor, list[str]]:
        """The residual stream entering each layer up to ``layer`` (None, −1: all, and the
        final one), stacked ``[component, *batch_and_pos, d_model]`` with labels
        ``"{l}_pre"`` (``"{l}_mid"`` with ``incl_mid``, on blocks that have
        ``hook_resid_mid``) and ``"final_post"``; ``apply_ln`` applies the norm that
        reads ``layer`` (at the final layer: ``ln_final`` on each entry, the logit lens)."""
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        layer = self.n_layers if layer is None or layer == -1 else layer
        if not 0 <= layer <= self.n_layers:
            raise ValueError(f"layer {layer} out of range: 0 … {self.n_layers}")
        names, labels = [], []
        for l in range(layer + 1):
            if l == self.n_layers:
                names.append(f"blocks.{l - 1}.hook_resid_post")
                labels.append("final_post")
                continue
            names.append(f"blocks.{l}.hook_resid_pre")
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                names.append(f"blocks.{l}.hook_resid_mid")
                labels.append(f"{l}_mid")
        components = torch.stack([pos_slice.apply(self[n], dim=-2) for n in names])
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice, mlp_input=mlp_input,
                                                has_batch_dim=self.has_batch_dim,
                                                recompute_ln=layer == self.n_layers)
        return (components, labels) if return_labels else components

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice: Any = None, incl_embeds: bool = True,
                        return_labels: bool = False) -> Tensor | tuple[Tensor, list[str]]:
        """The residual stream entering ``layer`` (None, −1: the final one) as a stack
        ``[component, *batch_and_pos, d_model]`` of what wrote it: the embeddings, then
        each block's writes (``resid_writers``: labels ``"{l}_attn_out"``,
        ``"{l}_mixer_out"``, ``"{l}_memory_fading"``, ``"{l}_mlp_out"``,
        ``"{l}_moe_expert_out"``). ``mode``: "all", "attn" (what mixes positions:
        attention, SSM mixers) or "mlp" (MLPs, MoE layers); ``mlp_input``: also the
        first write of block ``layer`` (the input of its second norm). The components
        add up to ``hook_resid_pre`` of ``layer`` (to the final residual by default)."""
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        layer = self.n_layers if layer is None or layer == -1 else layer
        if not 0 <= layer <= self.n_layers:
            raise ValueError(f"layer {layer} out of range: 0 … {self.n_layers}")
        parts: list[tuple[str, str]] = []
        if incl_embeds:
            parts += [(n.removeprefix("hook_"), n) for n in ("hook_embed", "hook_pos_embed") if n in self.cache_dict]
        for l in range(min(layer + int(mlp_input), self.n_layers)):
            writers = self.resid_writers(l)
            self._check_writers(l, writers)
            if l == layer:  # mlp_input: only what comes before the second norm
                writers = writers[:1]
            parts += [(f"{l}_{hook.split('.', 2)[2].replace('.hook_', '_')}", hook)
                      for kind, hook in writers if mode in ("all", kind)]
        if not parts:
            raise ValueError(f"nothing to decompose: layer={layer}, mode={mode!r}, incl_embeds={incl_embeds}")
        components = torch.stack([pos_slice.apply(self[hook], dim=-2) for _, hook in parts])
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        labels = [label for label, _ in parts]
        return (components, labels) if return_labels else components

    def _check_writers(self, layer: int, writers: list[tuple[str, str]]) -> None:
        """The writes of block ``layer`` add up to resid_post − resid_pre (where cached)."""
        pre, post = f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_post"
        if not writers:
            raise NotImplementedError(
                f"blocks.{layer} ({type(self._block(layer)).__name__}) declares no residual writes and none of "
                f"{', '.join(_MIXERS + _POSITIONWISE)} exists in it: give the block a `resid_writers` attribute")
        missing = [hook for _, hook in writers if hook not in self.cache_dict]
        if missing:
            raise CacheKeyError(f"decompose_resid needs {', '.join(missing)} in the cache "
                                "(run_with_cache with names_filter=None, or naming them)")
        if pre not in self.cache_dict or post not in self.cache_dict:
            return
        total = sum(self.cache_dict[hook].float() for _, hook in writers)
        delta = self.cache_dict[post].float() - self.cache_dict[pre].float()
        tol = 1e-4 * float(self.cache_dict[post].float().abs().max().clamp(min=1.0))
        err = float((total - delta).abs().max())
        if not err <= tol:
            raise ValueError(
                f"blocks.{layer}: {', '.join(h for _, h in writers)} do not add up to hook_resid_post − hook_resid_pre "
                f"(off by {err:.3g}): was the residual stream edited by a hook during this run, or does "
                f"{type(self._block(layer)).__name__} write something else (declare `resid_writers`)?")

    # -- attention heads ----------------------------------------------------------
    def _head_result(self, layer: int) -> Tensor:
        """Per-head contribution ``[*batch_and_pos, head, d_model]`` of block ``layer``'s
        attention (without the output bias): hook_z through each head's slice of W_O."""
        attn = getattr(self._block(layer), "attn", None)
        W_O = getattr(attn, "W_O", None)
        n_heads = getattr(attn, "n_heads", None)
        if W_O is None or n_heads is None:
            kind = type(self.model).__name__
            raise NotImplementedError(
                f"blocks.{layer} of this {kind} has no attention heads (no attn.W_O / attn.n_heads): "
                "stack_head_results needs attention; decompose_resid splits the residual stream by "
                "mixer and MLP for every model")
        weight = W_O.weight if isinstance(W_O, torch.nn.Linear) else W_O
        W = rearrange(weight, "m (h e) -> h e m", h=n_heads) if weight.ndim == 2 else weight
        z = self[f"blocks.{layer}.attn.hook_z"]
        return einsum(z, W.to(z.dtype), "... h e, h e m -> ... h m")

    def compute_head_results(self) -> None:
        """Cache ``blocks.{l}.attn.hook_result`` ``[*batch_and_pos, head, d_model]`` for
        every block (TransformerLens' name): each head's share of ``attn.hook_out``
        (which is their sum plus the output bias)."""
        for layer in range(self.n_layers):
            self.cache_dict[f"blocks.{layer}.attn.hook_result"] = self._head_result(layer)

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice: Any = None, apply_ln: bool = False) -> Tensor | tuple[Tensor, list[str]]:
        """Every head's contribution to the residual stream before ``layer`` (−1, None:
        all), stacked ``[layer·head (+1), *batch_and_pos, d_model]``, labels ``L{l}H{h}``;
        ``incl_remainder`` adds the rest of the stream (resid_post of layer − 1 minus
        the heads). Raises NotImplementedError on blocks without attention heads."""
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        layer = self.n_layers if layer is None or layer == -1 else layer
        parts, labels = [], []
        for l in range(layer):
            result = pos_slice.apply(self._head_result(l), dim=-3)
            parts.append(rearrange(result, "... h m -> h ... m"))
            labels += [f"L{l}H{h}" for h in range(result.shape[-2])]
        if parts:
            components = torch.cat(parts)
        else:
            ref = pos_slice.apply(self["hook_embed"], dim=-2)
            components = ref.new_zeros(0, *ref.shape)
        if incl_remainder and layer > 0:
            rest = pos_slice.apply(self[f"blocks.{layer - 1}.hook_resid_post"], dim=-2) - components.sum(0)
            components = torch.cat([components, rest[None]])
            labels.append("remainder")
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice)
        return (components, labels) if return_labels else components

    # -- TransformerLens helpers that our models cannot serve ---------------------
    def _unsupported(self, what: str, instead: str) -> NotImplementedError:
        return NotImplementedError(f"ActivationCache.{what} is not available for ssmlens models "
                                   f"({type(self.model).__name__}): {instead}")

    def get_full_resid_decomposition(self, *args: Any, **kwargs: Any):
        raise self._unsupported("get_full_resid_decomposition", "it needs TransformerLens' folded "
                                "weights and per-neuron MLP results; use decompose_resid and stack_head_results")

    def get_neuron_results(self, *args: Any, **kwargs: Any):
        raise self._unsupported("get_neuron_results", "it needs TransformerLens' mlp.W_out layout; "
                                "mlp.hook_post holds the neuron activations")

    def stack_neuron_results(self, *args: Any, **kwargs: Any):
        raise self._unsupported("stack_neuron_results", "it needs TransformerLens' mlp.W_out layout; "
                                "mlp.hook_post holds the neuron activations")

    def logit_lens(self, **kwargs: Any):
        raise self._unsupported("logit_lens", "use accumulated_resid(apply_ln=True) @ model.W_U")

    def ssm_layers(self, *args: Any, **kwargs: Any):
        raise self._unsupported("ssm_layers", "the SSM mixers are blocks.{l}.mixer")

    def compute_ssm_state(self, *args: Any, **kwargs: Any):
        raise self._unsupported("compute_ssm_state", "cache blocks.{l}.mixer.hook_ssm_state instead")

    def compute_ssm_effective_attention(self, *args: Any, **kwargs: Any):
        raise self._unsupported("compute_ssm_effective_attention",
                                "compute it from the cached hook_delta, hook_B and hook_C")
