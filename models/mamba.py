"""Mamba-1 language model (mamba_ssm's MambaLMHeadModel), fully hooked.

embedding -> n_layers × [RMSNorm -> MambaMixer -> + residual] -> RMSNorm -> unembed
(tied to the embedding by default). Hooks: ``hook_embed``,
``blocks.{l}.hook_resid_pre``/``hook_resid_post`` and every ``blocks.{l}.mixer.*``
row of DESIGN §2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.kernels.norm import rms_norm
from ssmlens.models.config_checks import check_sizes
from ssmlens.models.lm import LanguageModel
from ssmlens.models.mamba_mixer import MambaMixer, MixerOptions
from ssmlens.models.fast_path import idle
from ssmlens.models.norm import RMSNorm, make_norm
from ssmlens.models.resume import Resume


@dataclass
class MambaConfig(MixerOptions):  # + the mixer's options (MixerOptions)
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    norm: str = "rms"
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        check_sizes(self)
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
        return self.hook_resid_post(resid + self.mixer(self._norm(resid), resume and resume.sub("mixer")))

    def _norm(self, resid: Tensor) -> Tensor:
        """``self.norm(resid)``; one fused op (``ssmlens.kernels.norm.rms_norm``, the same
        arithmetic) when the norm is an RMSNorm that nothing can see run
        (``ssmlens.models.fast_path.idle``: no hook on it or its hook points)."""
        norm = self.norm
        if isinstance(norm, RMSNorm) and idle(norm):
            return rms_norm(resid, norm.weight, norm.eps)
        return norm(resid)

    @property
    def read_reach(self) -> int:
        """How many positions after a changed input ``forward_read`` computes (the
        conv's reach): a window ending that far after the last change may be read at
        any later position."""
        return self.mixer.cfg.d_conv - 1

    def reads_sparsely(self, resume: Resume) -> bool:
        """Whether ``forward_read`` computes only the span it needs: the cache holds the
        mixer's y, Δ, C and z (``resume_hook_names(model, edits=True)``), nothing listens
        to the block after ``hook_resid_pre`` nor to its mixer, which has no state edit."""
        points = [self.hook_resid_post] + [m for m in self.mixer.modules() if isinstance(m, HookPoint)]
        mixer = resume.sub("mixer")
        cached = all(mixer.scope + f"hook_{h}" in resume.cache for h in ("ssm_out", "delta", "C", "z"))
        return cached and mixer.own_edit is None and all(p._untouched() for p in points)

    def forward_read(self, resid: Tensor, resume: Resume, local: Tensor) -> Tensor:
        """This block as a last block of a resumed forward (``ssmlens.models.resume``): its
        output ``[R, Q, d_model]`` at window offsets ``local`` (int64 ``[R, Q]``, ≥ 0) only;
        offsets past the window are allowed when ``reads_sparsely`` and the window
        reaches ``read_reach`` positions past its last changed input.

        Past the last window position whose input differs from the cached run's, the
        mixer's conv reaches d_conv − 1 positions; after them its output follows in
        closed form (``MambaMixer.read_out``), so only that span is computed. Otherwise
        (``reads_sparsely`` false) the whole window runs and is read at ``local``."""
        mixer = resume.sub("mixer")
        rows = torch.arange(resid.shape[0], device=resid.device)[:, None]
        if not self.reads_sparsely(resume):
            if bool((local >= resid.shape[1]).any()):
                raise ValueError("forward_read: reads past the window need a block without hooks after "
                                 "hook_resid_pre and without a state edit of its mixer")
            return self.forward(resid, resume)[rows, local]
        resid = self.hook_resid_pre(resid)
        changed = (resid != resume.window("hook_resid_pre").to(resid.dtype)).any(-1)  # R window
        offset = torch.arange(resid.shape[1], device=resid.device)
        last = int(torch.where(changed, offset, -1).max()) if changed.numel() else -1
        span = min(resid.shape[1], max(1, last + self.mixer.cfg.d_conv))
        inside = (local < resid.shape[1])[..., None]
        at = (resume.start[:, None] + local).clamp(max=resume.seq_len - 1)
        resid_read = torch.where(inside, resid[rows, local.clamp(max=resid.shape[1] - 1)],
                                 resume.cache[resume.scope + "hook_resid_pre"][resume.ex[:, None], at].to(resid.dtype))
        return resid_read + self.mixer.read_out(self._norm(resid[:, :span]), mixer, local)


class Mamba(LanguageModel):
    model_type = "mamba"
    config_class = MambaConfig

    def __init__(self, cfg: MambaConfig | None = None, **overrides):
        cfg = cfg or MambaConfig(**overrides)
        super().__init__(cfg)
        self.blocks = nn.ModuleList([MambaBlock(cfg) for _ in range(cfg.n_layers)])
        self.setup()
