"""The hook-name vocabulary of DESIGN §2: which names exist and the axes of each.

Every array that leaves a model (a cache, a run store, a dashboard figure) is
labelled by the axis names given here, so that ``dims_for("blocks.0.mixer.hook_B")``
and the store's ``dimension_names`` always agree.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence

# Suffix of a hook name -> the names of its axes (batch first, then position).
HOOK_DIMS: dict[str, tuple[str, ...]] = {
    "hook_embed": ("batch", "pos", "d_model"),
    "hook_pos_embed": ("batch", "pos", "d_model"),
    "hook_resid_pre": ("batch", "pos", "d_model"),
    "hook_resid_mid": ("batch", "pos", "d_model"),
    "hook_resid_post": ("batch", "pos", "d_model"),
    "ln_final.hook_normalized": ("batch", "pos", "d_model"),
    "mixer.hook_x": ("batch", "pos", "d_inner"),
    "mixer.hook_z": ("batch", "pos", "d_inner"),
    "mixer.hook_conv": ("batch", "pos", "d_inner"),
    "mixer.hook_delta": ("batch", "pos", "d_inner"),
    "mixer.hook_B": ("batch", "pos", "d_state"),
    "mixer.hook_C": ("batch", "pos", "d_state"),
    "mixer.hook_ssm_state": ("batch", "pos", "d_inner", "d_state"),
    "mixer.hook_ssm_out": ("batch", "pos", "d_inner"),
    "mixer.hook_out": ("batch", "pos", "d_model"),
    "attn.hook_q": ("batch", "pos", "head", "d_head"),
    "attn.hook_k": ("batch", "key_pos", "head", "d_head"),
    "attn.hook_v": ("batch", "key_pos", "head", "d_head"),
    "attn.hook_k_fading": ("batch", "pos", "head", "d_head"),  # B'MOJO: each query's fading key
    "attn.hook_v_fading": ("batch", "pos", "head", "d_head"),
    "attn.hook_z": ("batch", "pos", "head", "d_head"),
    "attn.hook_attn_scores": ("batch", "head", "query_pos", "key_pos"),
    "attn.hook_pattern": ("batch", "head", "query_pos", "key_pos"),
    "attn.hook_out": ("batch", "pos", "d_model"),
    "mlp.hook_pre": ("batch", "pos", "d_mlp"),
    "mlp.hook_post": ("batch", "pos", "d_mlp"),
    "mlp.hook_out": ("batch", "pos", "d_model"),
    "memory.hook_innovation": ("batch", "pos"),
    "memory.hook_write": ("batch", "pos"),
    "memory.hook_fading": ("batch", "pos", "d_model"),
    "moe.hook_router_logits": ("batch", "pos", "expert"),
    "moe.hook_expert": ("batch", "pos"),
    "moe.hook_expert_out": ("batch", "pos", "d_model"),
    "moe.hook_drop": ("batch", "pos"),
    # norms (models/norm.py): hook_scale is the divisor, [batch, pos, 1] as in TransformerLens
    "norm.hook_scale": ("batch", "pos", "one"),
    "norm.hook_normalized": ("batch", "pos", "d_model"),
    "moe_norm.hook_scale": ("batch", "pos", "one"),
    "moe_norm.hook_normalized": ("batch", "pos", "d_model"),
    "ln1.hook_scale": ("batch", "pos", "one"),
    "ln1.hook_normalized": ("batch", "pos", "d_model"),
    "ln2.hook_scale": ("batch", "pos", "one"),
    "ln2.hook_normalized": ("batch", "pos", "d_model"),
    "ln_final.hook_scale": ("batch", "pos", "one"),
    "ln_final.hook_normalized": ("batch", "pos", "d_model"),
    # Based (models/based.py): q, k per head in feature_dim dims; φ(q), φ(k) in 1 + f + f²
    "mixer.hook_short": ("batch", "pos", "d_model"),
    "mixer.hook_q": ("batch", "pos", "head", "d_feature"),
    "mixer.hook_k": ("batch", "pos", "head", "d_feature"),
    "mixer.hook_v": ("batch", "pos", "head", "d_head"),
    "mixer.hook_phi_q": ("batch", "pos", "head", "feature"),
    "mixer.hook_phi_k": ("batch", "pos", "head", "feature"),
    "mixer.hook_kv_state": ("batch", "pos", "head", "feature", "d_head"),
    "mixer.hook_normalizer": ("batch", "pos", "head"),
    "mixer.hook_linear_out": ("batch", "pos", "head", "d_head"),
    "mixer.hook_window_q": ("batch", "pos", "head", "d_head"),
    "mixer.hook_window_k": ("batch", "key_pos", "head", "d_head"),
    "mixer.hook_window_v": ("batch", "key_pos", "head", "d_head"),
    "mixer.hook_window_pattern": ("batch", "head", "query_pos", "key_pos"),
    "mixer.hook_window_out": ("batch", "pos", "head", "d_head"),
    # H3 (models/h3.py); its hook_ssm_state / hook_ssm_out have Mamba's layout
    "mixer.hook_shift_out": ("batch", "pos", "d_model"),
    "mixer.hook_kv": ("batch", "pos", "d_kv"),
    # Hyena (models/hyena.py): the filters have no batch axis
    "mixer.hook_filter": ("order", "d_model", "lag"),
    **{f"mixer.hook_x{n}": ("batch", "pos", "d_model") for n in range(1, 9)},
    **{f"mixer.hook_conv_out_{n}": ("batch", "pos", "d_model") for n in range(1, 9)},
}

# Suffixes whose rank differs between mixers (H3's and Hyena's q, k, v are per channel,
# Based's per head): the alternative of matching rank is used.
HOOK_DIMS_ALTERNATIVES: dict[str, tuple[tuple[str, ...], ...]] = {
    "mixer.hook_q": (("batch", "pos", "d_model"),),
    "mixer.hook_k": (("batch", "pos", "d_model"),),
    "mixer.hook_v": (("batch", "pos", "d_model"),),
}

# Models whose hooks of the same name have other axes: model_type -> suffix -> axes.
MODEL_HOOK_DIMS: dict[str, dict[str, tuple[str, ...]]] = {
    "mamba2": {  # per-head Δ, grouped B/C, states per head (models/mamba2_mixer.py)
        "mixer.hook_delta": ("batch", "pos", "head"),
        "mixer.hook_B": ("batch", "pos", "group", "d_state"),
        "mixer.hook_C": ("batch", "pos", "group", "d_state"),
        "mixer.hook_ssm_state": ("batch", "pos", "head", "d_head", "d_state"),
    },
}
# Without a model type, a tensor's rank tells Mamba-2's grouped B/C and per-head states apart.
_BY_NDIM = {(suffix, len(dims)): dims for suffix, dims in MODEL_HOOK_DIMS["mamba2"].items()}

# Hooks whose values are costly: computed only when something listens to them.
COSTLY_SUFFIXES = ("mixer.hook_ssm_state", "attn.hook_pattern", "attn.hook_attn_scores", "mixer.hook_kv_state",
                   "mixer.hook_window_pattern")

_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def hook_suffix(name: str) -> str:
    """``blocks.3.mixer.hook_B`` -> ``mixer.hook_B``; names outside blocks are kept."""
    return _LAYER_RE.sub("", name)


def hook_layer(name: str) -> int | None:
    """The block index of a hook name, or None for hooks outside the blocks."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


def dims_for(name: str, ndim: int | None = None, model_type: str | None = None) -> tuple[str, ...]:
    """Axis names of a hook's tensor; generic ``dim_i`` names for unknown hooks.

    ``ndim`` (when given) must agree with the table, else the generic names are
    returned, so that a gradient or a reduced cache entry is still labelled.
    ``model_type`` picks a model's own axes where they differ (``MODEL_HOOK_DIMS``).
    """
    suffix = hook_suffix(name)
    if suffix.endswith("_grad"):
        suffix = suffix[: -len("_grad")]
    dims = MODEL_HOOK_DIMS.get(model_type or "", {}).get(suffix) or HOOK_DIMS.get(suffix)
    if ndim is not None and dims is not None and len(dims) != ndim:
        # another mixer's layout of the same name: Mamba-2's per-head Δ / grouped B, C, or
        # H3's and Hyena's per-channel q, k, v
        dims = _BY_NDIM.get((suffix, ndim)) or next(
            (alt for alt in HOOK_DIMS_ALTERNATIVES.get(suffix, ()) if len(alt) == ndim), None)
    if dims is None or (ndim is not None and len(dims) != ndim):
        return tuple(f"dim_{i}" for i in range(ndim or 0))
    return dims


def has_batch_axis(name: str, ndim: int | None = None) -> bool:
    """Whether a hook's value starts with a batch axis: every hook but those the table
    gives none (Hyena's filters); unknown hooks are assumed to have one."""
    dims = dims_for(name, ndim)
    return not dims or dims[0] == "batch" or dims[0].startswith("dim_")


def is_costly(name: str) -> bool:
    """Whether a hook's value is only materialized when listened to."""
    return hook_suffix(name) in COSTLY_SUFFIXES


class UnknownHookError(KeyError):
    """A hook name that the model does not have; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def check_hook_names(names: Iterable[str], valid: Iterable[str]) -> None:
    """Raise UnknownHookError for the first name not in ``valid``, with suggestions."""
    valid = list(valid)
    valid_set = set(valid)
    for name in names:
        if name in valid_set:
            continue
        close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
        if not close:
            # Fall back on the suffix: a misspelt layer index still finds its kind.
            suffix = hook_suffix(name)
            close = [v for v in valid if v.endswith(suffix)][:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownHookError(
            f"unknown hook name {name!r}.{hint} (model has {len(valid)} hook points; "
            "see model.hook_dict for all of them)"
        )


# TransformerLens' names -> ours. TransformerLens calls a block's norms ``ln1`` (before
# its first sublayer) and ``ln2`` (before its second); ours are named by what they feed:
#
#   TransformerLens                    Mamba, MoE-Mamba                    Transformer, B'MOJO
#   blocks.{l}.ln1.hook_scale          blocks.{l}.norm.hook_scale          blocks.{l}.ln1.hook_scale
#   blocks.{l}.ln1.hook_normalized     blocks.{l}.norm.hook_normalized     blocks.{l}.ln1.hook_normalized
#   blocks.{l}.ln2.hook_scale          blocks.{l}.moe_norm.hook_scale      blocks.{l}.ln2.hook_scale
#   ln_final.hook_scale                ln_final.hook_scale                 ln_final.hook_scale
#
# (``ln{i}`` is the i-th norm module of the block, in the order the block applies them.)
# TransformerLens' shorthand ``cache["ssm_state", 0]`` means ``blocks.0.hook_ssm_state``;
# ours live one level down, so the lookup also tries each sublayer of TL_SUBLAYERS:
# ``blocks.0.mixer.hook_ssm_state``, ``cache["write", 1]`` -> ``blocks.1.memory.hook_write``.
TL_NORMS = ("ln1", "ln2")
TL_SUBLAYERS = ("mixer", "memory", "moe", "attn", "mlp")

_TL_NORM_RE = re.compile(r"^blocks\.(\d+)\.ln([12])\.(hook_\w+)$")
_BLOCK_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_\w+)$")


def tl_name_candidates(name: str, block_norms: Callable[[int], Sequence[str]]) -> list[str]:
    """Our names that a TransformerLens name may denote (the caller keeps those that
    exist): ``blocks.{l}.ln{i}.X`` -> the i-th norm of block l (``block_norms(l)``
    lists a block's norm module names in order); ``blocks.{l}.hook_X`` ->
    ``blocks.{l}.<sublayer>.hook_X`` for each of TL_SUBLAYERS; else none."""
    m = _TL_NORM_RE.match(name)
    if m:
        layer, i, hook = int(m.group(1)), int(m.group(2)) - 1, m.group(3)
        norms = list(block_norms(layer))
        return [f"blocks.{layer}.{norms[i]}.{hook}"] if i < len(norms) else []
    m = _BLOCK_HOOK_RE.match(name)
    if m:
        return [f"blocks.{m.group(1)}.{sub}.{m.group(2)}" for sub in TL_SUBLAYERS]
    return []
