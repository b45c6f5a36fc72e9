"""Instrumented sequence models (DESIGN §2). ``import models`` needs torch, einops,
safetensors and transformer_lens' hook points only."""

from models.bmojo import BMojo, BMojoConfig
from models.checkpoint import CheckpointError, load_model, save_model
from models.mamba import Mamba, MambaConfig
from models.moe_mamba import MoEMamba, MoEMambaConfig
from models.registry import build_model, model_class, model_names, register
from models.transformer import Transformer, TransformerConfig

__all__ = [
    "BMojo",
    "BMojoConfig",
    "MoEMamba",
    "MoEMambaConfig",
    "CheckpointError",
    "Mamba",
    "MambaConfig",
    "Transformer",
    "TransformerConfig",
    "build_model",
    "load_model",
    "model_class",
    "model_names",
    "register",
    "save_model",
]
