"""Mamba-2 language model (mamba_ssm's MambaLMHeadModel with ``layer="Mamba2"``), hooked.

embedding -> n_layers × [RMSNorm -> Mamba2Mixer -> + residual] -> RMSNorm -> unembed
(tied to the embedding by default). Hooks: ``hook_embed``,
``blocks.{l}.hook_resid_pre``/``hook_resid_post`` and the ``blocks.{l}.mixer.*`` hooks of
``Mamba2Mixer`` (per-head Δ, grouped B/C, states ``[b, pos, head, d_head, d_state]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.models.config_checks import check_sizes
from ssmlens.models.lm import LanguageModel
from ssmlens.models.mamba2_mixer import Mamba2Mixer, Mamba2Options
from ssmlens.models.norm import make_norm
from ssmlens.models.resume import Resume


@dataclass
class Mamba2Config(Mamba2Options):  # + the mixer's options (Mamba2Options)
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    norm: str = "rms"
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        check_sizes(self)
        self.mamba2_config().check()

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        return self.d_inner // self.d_head


class Mamba2Block(nn.Module):
    # What a resumed forward reads (models.resume): the state at start − 1; the conv's
    # input before the window is rebuilt from the cached hook_resid_pre (Mamba2Mixer._xbc_before).
    resume_hooks = ("mixer.hook_ssm_state",)
    local_after_mixer = True  # the output at t depends on the mixer's output at t alone (models.resume)

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg.mamba2_config(), n_layers_for_init=cfg.n_layers)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor, resume: Resume | None = None) -> Tensor:
        resid = self.hook_resid_pre(resid)
        if resume is None:
            return self.hook_resid_post(resid + self.mixer(self.norm(resid)))
        # the mixer's input at the conv's reach before the window: the cached run's, normed
        # without the norm's hooks (they fire on the window only)
        before = self.norm.unhooked(resume.before("hook_resid_pre", self.mixer.cfg.d_conv - 1))
        return self.hook_resid_post(resid + self.mixer(self.norm(resid), resume.sub("mixer"), before))


class Mamba2(LanguageModel):
    model_type = "mamba2"
    config_class = Mamba2Config

    def __init__(self, cfg: Mamba2Config | None = None, **overrides):
        cfg = cfg or Mamba2Config(**overrides)
        super().__init__(cfg)
        self.blocks = nn.ModuleList([Mamba2Block(cfg) for _ in range(cfg.n_layers)])
        self.setup()
