"""What Based, H3 and Hyena share: a config base, the pre-norm residual block with an
MLP, and the language model around the blocks.

    resid_mid  = resid_pre + mixer(ln1(resid_pre))
    resid_post = resid_mid + mlp(ln2(resid_mid))        (no MLP when d_mlp = 0)

Hooks: ``blocks.{l}.hook_resid_pre`` / ``hook_resid_mid`` / ``hook_resid_post``, the
mixer's ``blocks.{l}.mixer.*`` and ``blocks.{l}.mlp.hook_pre/post/out``, as for the
Transformer. These blocks do not support resumed forwards (no ``resume_hooks``):
patching runs them from a block's cached ``hook_resid_pre`` over whole sequences
(``ssmlens.probes.batched``, "resuming at a block only").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn as nn
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.models.config_checks import check_sizes
from ssmlens.models.lm import LanguageModel
from ssmlens.models.mlp import MLP
from ssmlens.models.norm import make_norm


@dataclass(kw_only=True)
class ZooConfig:
    """Fields every zoo model has; each model's config adds its mixer's options."""

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    d_mlp: int | None = None  # default 4 * d_model; 0: no MLP (zoology's synthetic-task models)
    norm: str = "layer"
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        check_sizes(self)
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if int(self.d_mlp) < 0:
            raise ValueError(f"d_mlp must be >= 0 (0: no MLP), got {self.d_mlp}")
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be 'rms' or 'layer', got {self.norm!r}")
        self.check()

    def check(self) -> None:
        """The mixer's own checks (subclasses)."""


class ZooBlock(nn.Module):
    """Pre-norm residual block around any mixer ``[b, L, d] -> [b, L, d]``, then an MLP."""

    def __init__(self, cfg: ZooConfig, mixer: nn.Module):
        super().__init__()
        self.ln1 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mixer = mixer
        self.mlp = None
        if cfg.d_mlp:
            self.ln2 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
            self.mlp = MLP(cfg.d_model, cfg.d_mlp)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor) -> Tensor:
        resid = self.hook_resid_pre(resid)
        resid = self.hook_resid_mid(resid + self.mixer(self.ln1(resid)))
        if self.mlp is not None:
            resid = resid + self.mlp(self.ln2(resid))
        return self.hook_resid_post(resid)


class ZooLM(LanguageModel):
    """Embedding -> ZooBlocks -> norm -> unembedding; subclasses name the config and
    the mixer class (built as ``mixer_class(cfg, layer)``)."""

    mixer_class: ClassVar[type] = nn.Module
    # nn.Embedding's own N(0, 1), as the Transformer: beside PyTorch's default Linear
    # init a 0.02 embedding drowned the token identity there (RESULTS.md, "Training").
    embed_init_std = 1.0

    def __init__(self, cfg: ZooConfig | None = None, **overrides):
        cfg = cfg or self.config_class(**overrides)
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        super().__init__(cfg)
        self.blocks = nn.ModuleList([ZooBlock(cfg, self.mixer_class(cfg, layer)) for layer in range(cfg.n_layers)])
        self.setup()
