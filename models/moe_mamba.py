"""MoE-Mamba (Pióro et al., 2024): Mamba mixer layers alternating with Switch MoE
feed-forward layers, fully hooked.

embedding -> n_layers × [norm -> MambaMixer -> + resid; norm -> SwitchMoE -> + resid]
-> norm -> unembed. Block l holds one Mamba layer (``blocks.{l}.mixer.*``) and the MoE
layer after it (``blocks.{l}.moe.hook_router_logits / hook_expert / hook_drop /
hook_expert_out``, see ``ssmlens.models.moe``); residual hooks ``hook_resid_pre`` (before
the mixer), ``hook_resid_mid`` (between mixer and MoE) and ``hook_resid_post``.
Tokens the MoE drops pass through the residual unchanged.

``auxiliary_losses()`` returns ``{"load_balance": mean over layers of α·E·Σ fᵢ·Pᵢ}``
from the last forward (α = ``load_balance_coef``, 0.01 by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.models.lm import LanguageModel
from ssmlens.models.mamba_mixer import MambaMixer, MixerOptions
from ssmlens.models.moe import SwitchMoE, ablate_expert
from ssmlens.models.norm import make_norm
from ssmlens.models.resume import Resume

__all__ = ["MoEMamba", "MoEMambaBlock", "MoEMambaConfig", "ablate_expert"]


@dataclass
class MoEMambaConfig(MixerOptions):  # + the mixer's options (MixerOptions)
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2  # pairs (Mamba layer, MoE layer)
    n_experts: int = 8
    d_ff: int | None = None  # expert hidden size; default 4 * d_model
    capacity_factor: float = 1.25
    load_balance_coef: float = 0.01  # α
    moe_bias: bool = True
    norm: str = "rms"
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_experts"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if int(self.d_ff) < 1:
            raise ValueError(f"d_ff must be >= 1, got {self.d_ff}")
        if not float(self.capacity_factor) > 0:
            raise ValueError(f"capacity_factor must be > 0, got {self.capacity_factor}")
        if not float(self.load_balance_coef) >= 0:
            raise ValueError(f"load_balance_coef must be >= 0, got {self.load_balance_coef}")
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be 'rms' or 'layer', got {self.norm!r}")
        self.mixer_config().check()



class MoEMambaBlock(nn.Module):
    resume_hooks = ("mixer.hook_x", "mixer.hook_ssm_state", "moe.hook_expert")  # models.resume

    def __init__(self, cfg: MoEMambaConfig):
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mixer = MambaMixer(cfg.mixer_config(), n_layers_for_init=cfg.n_layers)
        self.moe_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.moe = SwitchMoE(cfg.d_model, cfg.d_ff, cfg.n_experts, cfg.capacity_factor,
                             cfg.load_balance_coef, cfg.moe_bias)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor, resume: Resume | None = None) -> Tensor:
        resid = self.hook_resid_pre(resid)
        resid = self.hook_resid_mid(resid + self.mixer(self.norm(resid), resume and resume.sub("mixer")))
        return self.hook_resid_post(resid + self.moe(self.moe_norm(resid), resume and resume.sub("moe")))


class MoEMamba(LanguageModel):
    model_type = "moe_mamba"
    config_class = MoEMambaConfig

    def __init__(self, cfg: MoEMambaConfig | None = None, **overrides):
        cfg = cfg or MoEMambaConfig(**overrides)
        super().__init__(cfg)
        self.blocks = nn.ModuleList([MoEMambaBlock(cfg) for _ in range(cfg.n_layers)])
        self.setup()

    def auxiliary_losses(self) -> dict[str, Tensor]:
        """``{"load_balance": mean over MoE layers of α·E·Σ fᵢ·Pᵢ}`` from the last forward."""
        losses = [b.moe.balance_loss for b in self.blocks if b.moe.balance_loss is not None]
        return {"load_balance": torch.stack(losses).mean()} if losses else {}
