"""B'MOJO (Zancato et al., 2024): fading memory from a Mamba mixer plus an eidetic
memory of innovative tokens, read by one attention.

Realization used here (DESIGN §4; no official implementation was published).
For a block input u = norm(resid) ``[b, L, d_model]``:

1. Fading memory: f = MambaMixer(u), the mixer's output tokens (``memory.hook_fading``).
2. Innovation test: û_t = W_p f_{t−1} (f_{−1} = 0), e_t = ‖u_t − û_t‖² / d and
   z_t = e_t / (ε + mean_{r≤t} e_r) (``memory.hook_innovation``). W_p is trained by
   the auxiliary loss ``"innovation"`` = mean e_t, with u and f detached.
3. Writes: write_t = z_t > τ (``memory.hook_write``, 0/1; values > 0.5 count as written).
   z averages about 1 by construction, so τ (default 1.5) reads "error 1.5× the usual".
   At initialization W_p = 0 and the block input is normalized, so e_t ≈ 1 for every
   token and nothing is written until W_p learns what is predictable; keep τ away
   from 1, where z of an untrained model sits and rounding would decide the writes.
4. Memory of query t: the ``memory_size`` most recent written tokens s ≤ t − w
   (a FIFO of tokens that have left the window).
5. One softmax over the keys {u_s : t−w < s ≤ t} ∪ {u_s : s ∈ M_t} ∪ {f_t}, with shared
   W_Q/W_K/W_V/W_O (rotary positions by default); resid += attention; then
   resid += MLP(norm(resid)).

Special cases (checked by tests): window ≥ L, ``use_ssm=False`` and ``memory_size=0``
is a causal Transformer layer; ``use_attention=False`` (window 0, memory 0) is the
Mamba mixer path resid + f (a Mamba block when ``d_mlp=0``); ``memory_size=0`` is
B'MOJO-F.

Where this departs from the paper's wording (as we read it: tokens that the SSM
predicts badly, an innovation test, join an eidetic memory that a sliding-window
attention reads together with fading-memory tokens from the SSM): the predictor is
one linear map W_p from the previous fading token to the block input, and its error
is standardized by the causal running mean so one τ serves every layer and scale;
the write is a hard threshold (no gradient flows through it; W_p learns only from its
own prediction loss); the memory is recomputed per query as a FIFO of the most recent
writes that have left the window (causal, vectorized, editable through
``hook_write``) rather than kept as a running buffer; and each query sees a single
fading token, the mixer output at its own position, not a bank of SSM readouts.
These choices are ours, not the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.models.bmojo_attention import BMojoAttention, PatternParts, split_pattern
from ssmlens.models.bmojo_memory import EideticMemory, memory_mask, window_mask
from ssmlens.models.lm import LanguageModel
from ssmlens.models.mamba_mixer import MambaMixer, MixerOptions
from ssmlens.models.mlp import MLP
from ssmlens.models.norm import make_norm
from ssmlens.models.resume import Resume

__all__ = ["BMojo", "BMojoBlock", "BMojoConfig", "PatternParts", "split_pattern"]


@dataclass
class BMojoConfig(MixerOptions):  # + the mixer's options (MixerOptions)
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    window: int = 32  # w: query t sees t − w < s ≤ t
    memory_size: int = 32  # eidetic tokens per query; 0 = B'MOJO-F
    threshold: float = 1.5  # τ on z_t (z ≈ 1 on average; −inf: write everything, +inf: nothing)
    innovation_eps: float = 1e-6  # ε in z_t = e_t / (ε + mean_{r≤t} e_r)
    d_mlp: int | None = None  # default 4 * d_model; 0 = no MLP
    use_ssm: bool = True  # False: no mixer, no fading column
    use_attention: bool = True  # False: the block adds f itself (Mamba path)
    positional: str = "rotary"  # "rotary" or "none"
    attn_bias: bool = True  # biases of attention and MLP projections
    norm: str = "rms"
    norm_eps: float = 1e-5
    tie_embeddings: bool = False  # tied N(0, 1) embeddings kept B'MOJO at chance on AR

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("window", "memory_size"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if math.isnan(float(self.threshold)):
            raise ValueError("threshold must be a number (±inf allowed), got nan")
        if not float(self.innovation_eps) > 0:
            raise ValueError(f"innovation_eps must be > 0, got {self.innovation_eps}")
        if self.positional not in ("rotary", "none"):
            raise ValueError(f"positional must be 'rotary' or 'none', got {self.positional!r}")
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be 'rms' or 'layer', got {self.norm!r}")
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if int(self.d_mlp) < 0:
            raise ValueError(f"d_mlp must be >= 0 (0 = no MLP), got {self.d_mlp}")
        if not (self.use_ssm or self.use_attention):
            raise ValueError("use_ssm and use_attention cannot both be False: the block would mix nothing")
        self.mixer_config().check()



class BMojoBlock(nn.Module):
    """ln1 -> (mixer -> fading f; memory -> writes; attn over window ∪ memory ∪ f)
    -> + resid -> ln2 -> MLP -> + resid."""

    def __init__(self, cfg: BMojoConfig):
        super().__init__()
        self.cfg = cfg
        # what a resumed forward reads (models.resume)
        self.resume_hooks = (("mixer.hook_x", "mixer.hook_ssm_state") if cfg.use_ssm else ()) + (
            ("memory.hook_fading", "memory.hook_write", "attn.hook_k", "attn.hook_v") if cfg.use_attention else ())
        self.ln1 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mixer = MambaMixer(cfg.mixer_config(), n_layers_for_init=cfg.n_layers) if cfg.use_ssm else None
        self.memory = EideticMemory(cfg.d_model, cfg.threshold, cfg.innovation_eps)
        self.attn = BMojoAttention(cfg.d_model, cfg.n_heads, cfg.positional, cfg.attn_bias) if cfg.use_attention else None
        self.ln2 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.d_mlp else None
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.attn_bias) if cfg.d_mlp else None
        self.hook_resid_pre = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor, resume: Resume | None = None) -> Tensor:
        """resid ``[b, L, d_model]``; with ``resume`` (``ssmlens.models.resume``) each row's
        window, the memory and the attention keys before it read from the cache."""
        cfg = self.cfg
        resid = self.hook_resid_pre(resid)
        u = self.ln1(resid)
        f = self.mixer(u, resume and resume.sub("mixer")) if self.mixer is not None else torch.zeros_like(u)
        f = self.memory.fade(f)
        if self.attn is None:
            self.memory.innovation_loss = None
            mixed = f
        elif resume is None:
            write = self.memory(u, f)
            L = u.shape[1]
            visible = window_mask(L, cfg.window, u.device)[None] | memory_mask(write, cfg.window, cfg.memory_size)
            mixed = self.attn(u, f, visible, fading_visible=cfg.use_ssm)
        else:
            at_memory = resume.sub("memory")
            write = self.memory(u, f, at_memory, u_cached=self.ln1(resume.full("hook_resid_pre")))
            write_all = at_memory.scatter(at_memory.full("hook_write"), write)  # the window's writes, in place
            L = resume.seq_len
            visible = window_mask(L, cfg.window, u.device)[None] | memory_mask(write_all, cfg.window, cfg.memory_size)
            mixed = self.attn(u, f, resume.gather(visible), fading_visible=cfg.use_ssm, resume=resume.sub("attn"))
        resid = self.hook_resid_mid(resid + mixed)
        if self.mlp is not None:
            resid = resid + self.mlp(self.ln2(resid))
        return self.hook_resid_post(resid)


class BMojo(LanguageModel):
    """B'MOJO language model: embedding -> n_layers × BMojoBlock -> norm -> unembed.

    Hooks: ``blocks.{l}.mixer.*`` (DESIGN §2), ``blocks.{l}.memory.hook_fading`` /
    ``hook_innovation`` / ``hook_write``, ``blocks.{l}.attn.hook_q/k/v/k_fading/
    v_fading/attn_scores/pattern/z/out`` (pattern layout: ``ssmlens.models.bmojo_attention``),
    ``blocks.{l}.mlp.*`` and ``blocks.{l}.hook_resid_pre/mid/post``.
    """

    # As the Transformer's (models/transformer.py): with 0.02 or with tied N(0, 1)
    # embeddings B'MOJO stayed at chance on the demo AR setting; untied N(0, 1)
    # reached 94.7% in 2000 steps.
    embed_init_std = 1.0

    model_type = "bmojo"
    config_class = BMojoConfig

    def __init__(self, cfg: BMojoConfig | None = None, **overrides):
        cfg = cfg or BMojoConfig(**overrides)
        super().__init__(cfg)
        self.blocks = nn.ModuleList([BMojoBlock(cfg) for _ in range(cfg.n_layers)])
        self.setup()

    def auxiliary_losses(self) -> dict[str, Tensor]:
        """``{"innovation": mean over blocks of mean e_t}`` from the last forward
        (trains the predictors W_p); empty before any forward with attention."""
        losses = [b.memory.innovation_loss for b in self.blocks if b.memory.innovation_loss is not None]
        return {"innovation": torch.stack(losses).mean()} if losses else {}

    def split_pattern(self, cache, layer: int) -> PatternParts:
        """Window / memory / fading parts of ``blocks.{layer}.attn.hook_pattern`` in a cache."""
        return split_pattern(cache[f"blocks.{layer}.attn.hook_pattern"], self.cfg)
