"""Instrumented sequence models (DESIGN §2). ``import ssmlens.models`` needs torch, einops,
safetensors and transformer_lens' hook points only."""

from ssmlens.models.based import Based, BasedConfig
from ssmlens.models.bmojo import BMojo, BMojoConfig
from ssmlens.models.checkpoint import CheckpointError, save_model
from ssmlens.models.h3 import H3, H3Config
from ssmlens.models.hyena import Hyena, HyenaConfig
from ssmlens.models.loader import load_model
from ssmlens.models.mamba import Mamba, MambaConfig
from ssmlens.models.mamba2 import Mamba2, Mamba2Config
from ssmlens.models.moe_mamba import MoEMamba, MoEMambaConfig
from ssmlens.models.registry import build_model, model_class, model_names, register
from ssmlens.models.transformer import Transformer, TransformerConfig

__all__ = [
    "Based",
    "BasedConfig",
    "H3",
    "H3Config",
    "Hyena",
    "HyenaConfig",
    "BMojo",
    "BMojoConfig",
    "MoEMamba",
    "MoEMambaConfig",
    "CheckpointError",
    "Mamba",
    "MambaConfig",
    "Mamba2",
    "Mamba2Config",
    "Transformer",
    "TransformerConfig",
    "build_model",
    "load_model",
    "model_class",
    "model_names",
    "register",
    "save_model",
]
