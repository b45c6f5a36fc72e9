"""Intervention sites by component, found from a model's hook names.

A component is a label and the hook kinds that realize it, in order of preference;
a model gets the first kind it has (``blocks.{l}.<kind>`` in any layer), or none::

    resid     the residual stream entering each block      hook_resid_pre
    mixer     what the token mixer adds to the residual    attn.hook_out (Transformer, B'MOJO:
                                                            its attention reads window, memory
                                                            and fading token), mixer.hook_out
                                                            (Mamba, Mamba-2, Based, H3, Hyena)
    state     the recurrent state                          mixer.hook_ssm_state (Mamba, MoE-Mamba,
                                                            B'MOJO's fading SSM, Mamba-2 per head,
                                                            H3's diagonal SSM),
                                                            mixer.hook_kv_state (Based)
    long_conv the last long convolution's output           mixer.hook_conv_out_N (Hyena: it has
                                                            no state; its value at a position is
                                                            what the filters carried there)
    attn_k    attention keys (the KV cache)                attn.hook_k
    attn_v    attention values                             attn.hook_v
    conv      the short convolution's output               mixer.hook_conv (Mamba, Mamba-2's u,
                                                            Based's BaseConv, Hyena's short filter
                                                            on gates and value),
                                                            mixer.hook_shift_out (H3's shift SSM)

Hook names follow DESIGN §2, so a new family whose hooks use them needs no entry here.
"""

from __future__ import annotations

from ssmlens.interp.hook_names import hook_suffix

COMPONENTS: dict[str, tuple[str, ...]] = {
    "resid": ("hook_resid_pre",),
    "mixer": ("attn.hook_out", "mixer.hook_out"),
    "state": ("mixer.hook_ssm_state", "mixer.hook_kv_state"),
    # Hyena's last long convolution (orders up to 4; the default is 2)
    "long_conv": tuple(f"mixer.hook_conv_out_{n}" for n in (4, 3, 2, 1)),
    "attn_k": ("attn.hook_k",),
    "attn_v": ("attn.hook_v",),
    "conv": ("mixer.hook_conv", "mixer.hook_shift_out"),
}


def model_components(model, wanted: list[str] | None = None) -> dict[str, str]:
    """{component label: the hook kind this model has for it}, in COMPONENTS order."""
    kinds = {hook_suffix(n) for n in model.hook_dict}
    out = {}
    for label, options in COMPONENTS.items():
        if wanted is not None and label not in wanted:
            continue
        kind = next((k for k in options if k in kinds), None)
        if kind is not None:
            out[label] = kind
    return out


def has_hook(model, kind: str) -> bool:
    return any(hook_suffix(n) == kind for n in model.hook_dict)
