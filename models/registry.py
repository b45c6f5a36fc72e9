"""Model registry: one name per model class, used by checkpoints, the trainer and the CLI."""

from __future__ import annotations

import difflib

_REGISTRY: dict[str, str] = {
    # name -> "module:Class", imported lazily so each model stays optional
    "mamba": "ssmlens.models.mamba:Mamba",
    "transformer": "ssmlens.models.transformer:Transformer",
    "bmojo": "ssmlens.models.bmojo:BMojo",
    "moe_mamba": "ssmlens.models.moe_mamba:MoEMamba",
    "mamba2": "ssmlens.models.mamba2:Mamba2",
    "based": "ssmlens.models.based:Based",
    "h3": "ssmlens.models.h3:H3",
    "hyena": "ssmlens.models.hyena:Hyena",
}


# Hugging Face ``model_type`` (config.json) -> "module:function(path, device, dtype)" that
# imports such a local checkpoint directory. Importers depend on their model; models
# never import an importer (they reach it through this table). "mamba_ssm" is
# state-spaces' original format (config.json with d_model / n_layer / ssm_cfg).
_HF_IMPORTERS: dict[str, str] = {
    "mamba": "ssmlens.models.hf_mamba:load_hf_mamba",
    "mamba2": "ssmlens.models.hf_mamba2:load_hf_mamba2",
    "gpt_neox": "ssmlens.models.hf_gpt_neox:load_hf_gpt_neox",
    "gpt2": "ssmlens.models.hf_gpt2:load_hf_gpt2",
    "mamba_ssm": "ssmlens.models.hf_mamba_ssm:load_mamba_ssm",
}


def register(name: str, target: str) -> None:
    """Register ``"module:Class"`` under ``name``."""
    _REGISTRY[name] = target


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def _resolve(target: str):
    import importlib

    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def hf_model_types() -> list[str]:
    """The Hugging Face ``model_type`` values ``ssmlens.load_model`` imports."""
    return sorted(_HF_IMPORTERS)


def hf_importer(hf_model_type: str, source: str = "checkpoint"):
    """The importer of Hugging Face checkpoints whose config.json says ``model_type``."""
    if hf_model_type not in _HF_IMPORTERS:
        raise ValueError(f"{source}: unsupported Hugging Face model_type {hf_model_type!r}; "
                         f"supported: {', '.join(sorted(_HF_IMPORTERS))}")
    return _resolve(_HF_IMPORTERS[hf_model_type])


def model_class(name: str):
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; valid models: {', '.join(model_names())}")
    return _resolve(_REGISTRY[name])


def build_model(name: str, **config):
    """Build a fresh model by name; unknown config fields are named in the error."""
    cls = model_class(name)
    import dataclasses

    valid = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown} for model {name!r}; valid fields: {sorted(valid)}")
    return cls(cls.config_class(**config))
