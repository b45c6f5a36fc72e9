"""Mamba-1 language model (mamba_ssm's MambaLMHeadModel), fully hooked.

embedding -> n_layers × [RMSNorm -> MambaMixer -> + residual] -> RMSNorm -> unembed
(tied to the embedding by default). Hooks: ``hook_embed``,
``blocks.{l}.hook_resid_pre``/``hook_resid_post`` and every ``blocks.{l}.mixer.*``
row of DESIGN §2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor

from interp.hooks import HookPoint
from models.lm import LanguageModel
from models.mamba_mixer import MambaMixer, MixerOptions
from models.norm import make_norm
from models.resume import Resume


@dataclass
class MambaConfig(MixerOptions):  # + the mixer's options (MixerOptions)
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    norm: str = "rms"
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.mixer_config().check()

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


class MambaBlock(nn.Module):
    resume_hooks = ("mixer.hook_x", "mixer.hook_ssm_state")  # what a resumed forward reads (models.resume)
    local_after_mixer = True  # the output at t depends on the mixer's output at t alone (models.resume)

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mixer = MambaMixer(cfg.mixer_config(), n_layers_for_init=cfg.n_layers)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor, resume: Resume | None = None) -> Tensor:
        resid = self.hook_resid_pre(resid)
        return self.hook_resid_post(resid + self.mixer(self.norm(resid), resume and resume.sub("mixer")))


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
