"""Model registry: one name per model class, used by checkpoints, the trainer and the CLI."""

from __future__ import annotations

import difflib

_REGISTRY: dict[str, str] = {
    # name -> "module:Class", imported lazily so each model stays optional
    "mamba": "models.mamba:Mamba",
    "transformer": "models.transformer:Transformer",
    "bmojo": "models.bmojo:BMojo",
    "moe_mamba": "models.moe_mamba:MoEMamba",
}


def register(name: str, target: str) -> None:
    """Register ``"module:Class"`` under ``name``."""
    _REGISTRY[name] = target


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def model_class(name: str):
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; valid models: {', '.join(model_names())}")
    module, cls = _REGISTRY[name].split(":")
    import importlib

    return getattr(importlib.import_module(module), cls)


def build_model(name: str, **config):
    """Build a fresh model by name; unknown config fields are named in the error."""
    cls = model_class(name)
    import dataclasses

    valid = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown} for model {name!r}; valid fields: {sorted(valid)}")
    return cls(cls.config_class(**config))
