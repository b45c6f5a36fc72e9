"""Mamba-1 language model (mamba_ssm's MambaLMHeadModel), fully hooked.

embedding -> n_layers × [RMSNorm -> MambaMixer -> + residual] -> RMSNorm -> unembed
(tied to the embedding by default). Hooks: ``hook_embed``,
``blocks.{l}.hook_resid_pre``/``hook_resid_post`` and every ``blocks.{l}.mixer.*``
row of DESIGN §2.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch.nn as nn
from torch import Tensor

from interp.hooks import HookPoint
from models.lm import LanguageModel
from models.mamba_mixer import MambaMixer, MixerConfig
from models.norm import make_norm


@dataclass
class MambaConfig:
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    bias: bool = False
    conv_bias: bool = True
    norm: str = "rms"
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    scan_backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.mixer_config().check()

    def mixer_config(self) -> MixerConfig:
        names = {f.name for f in fields(MixerConfig)}
        return MixerConfig(**{k: v for k, v in self.__dict__.items() if k in names})

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


class MambaBlock(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mixer = MambaMixer(cfg.mixer_config(), n_layers_for_init=cfg.n_layers)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor) -> Tensor:
        resid = self.hook_resid_pre(resid)
        return self.hook_resid_post(resid + self.mixer(self.norm(resid)))


class Mamba(LanguageModel):
    model_type = "mamba"
    config_class = MambaConfig

    def __init__(self, cfg: MambaConfig | None = None, **overrides):
        cfg = cfg or MambaConfig(**overrides)
        super().__init__(cfg)
        self.blocks = nn.ModuleList([MambaBlock(cfg) for _ in range(cfg.n_layers)])
        self.setup()

    @classmethod
    def from_hf(cls, path, device="cpu") -> "Mamba":
        """Load a Hugging Face ``MambaForCausalLM`` checkpoint directory from a local path."""
        from models.hf_mamba import load_hf_mamba

        return load_hf_mamba(path, device=device)
