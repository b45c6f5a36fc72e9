"""Pre-norm GPT-style decoder, fully hooked (TransformerLens names).

embedding (+ learned positions, or rotary inside attention) -> n_layers ×
[norm -> attention -> + resid; norm -> MLP -> + resid] -> norm -> unembed.

With ``parallel_attn_mlp`` (GPT-NeoX / Pythia) a block is
resid + attention(norm1(resid)) + MLP(norm2(resid)), and ``hook_resid_mid`` does not
fire (as in TransformerLens). ``rotary_dim`` rotates only the first dimensions of each
head (Pythia: a quarter), ``act_fn`` picks the MLP's GELU (``"gelu_new"``: GPT-2's
tanh form). The defaults keep every checkpoint written before these fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from jaxtyping import Float, Int
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.models.attention import Attention
from ssmlens.models.lm import LanguageModel
from ssmlens.models.mlp import ACTIVATIONS, MLP
from ssmlens.models.norm import make_norm
from ssmlens.models.resume import Resume


@dataclass
class TransformerConfig:
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int | None = None  # default 4 * d_model
    n_ctx: int = 2048
    positional: str = "learned"  # "learned" or "rotary"
    # Learned positions start at the tokens' scale (N(0, 1), as nn.Embedding): at 0.02 the
    # position signal is 50x below the token one and AR with 4096 keys stayed below 4%
    # for 24k steps on an H100; at 1.0 it reached 99.85% by step 11k (benchmarks/RESULTS.md).
    pos_init_std: float = 1.0
    norm: str = "layer"
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    bias: bool = True
    rotary_dim: int | None = None  # dimensions of each head that rotate (None: all of d_head)
    rotary_base: float = 10000.0
    parallel_attn_mlp: bool = False
    act_fn: str = "gelu"  # "gelu" (exact) or "gelu_new" (tanh approximation, GPT-2)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_ctx"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if self.positional not in ("learned", "rotary"):
            raise ValueError(f"positional must be 'learned' or 'rotary', got {self.positional!r}")
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        d_head = self.d_model // self.n_heads
        if self.rotary_dim is not None and not (0 < int(self.rotary_dim) <= d_head and self.rotary_dim % 2 == 0):
            raise ValueError(f"rotary_dim must be an even number in (0, d_head={d_head}], got {self.rotary_dim}")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn must be one of {sorted(ACTIVATIONS)}, got {self.act_fn!r}")


class TransformerBlock(nn.Module):
    resume_hooks = ("attn.hook_k", "attn.hook_v")  # what a resumed forward reads (models.resume)

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.positional, cfg.bias,
                              rotary_dim=cfg.rotary_dim, rotary_base=cfg.rotary_base)
        self.ln2 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.bias, act_fn=cfg.act_fn)
        self.parallel = cfg.parallel_attn_mlp
        self.hook_resid_pre = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

    # forward_read reads past the window: a position after every changed input keeps the
    # cached residual, and only its query sees the new keys (models.resume).
    read_reach = 0
    read_hooks = ()  # what forward_read needs cached beyond resume_hooks
    # Hooks whose value at t reaches the block's output at t alone (after attention mixes
    # positions): in a last block, a patch there changes only the positions it patches.
    local_hooks = ("attn.hook_q", "attn.hook_z", "attn.hook_out", "hook_resid_mid", "mlp.hook_pre",
                   "mlp.hook_post", "mlp.hook_out", "hook_resid_post")

    def forward(self, resid: Tensor, resume: Resume | None = None) -> Tensor:
        resid = self.hook_resid_pre(resid)
        attn_out = self.attn(self.ln1(resid), resume and resume.sub("attn"))
        if self.parallel:  # attention and MLP both read the block's input
            return self.hook_resid_post(resid + attn_out + self.mlp(self.ln2(resid)))
        resid = self.hook_resid_mid(resid + attn_out)
        return self.hook_resid_post(resid + self.mlp(self.ln2(resid)))

    def reads_sparsely(self, resume: Resume) -> bool:
        """Whether ``forward_read`` computes only what its reads need: nothing sees the
        block (nor any module in it) after ``hook_resid_pre``: no hook of ours, torch's
        or nnsight's, which would otherwise be given partial values."""
        return all(HookPoint._untouched(m) for m in self.modules() if m is not self.hook_resid_pre)

    def forward_read(self, resid: Float[Tensor, "row window d_model"], resume: Resume,
                     local: Int[Tensor, "row q"]) -> Float[Tensor, "row q d_model"]:
        """This block as the last block of a resumed forward (``ssmlens.models.resume``): its
        output at window offsets ``local`` (≥ 0) only. Offsets past the window are
        allowed when ``reads_sparsely`` (the residual there is the cached run's).

        Keys and values are computed only where the window's input differs from the
        cached run's (elsewhere they are the cached ones); the query, attention output
        and MLP only at the rows read. Otherwise (``reads_sparsely`` false) the whole
        window runs, hooks fire as in ``forward``, and it is read at ``local``."""
        rows = torch.arange(resid.shape[0], device=resid.device)[:, None]
        width = resid.shape[1]
        if not self.reads_sparsely(resume):
            if bool((local >= width).any()):
                raise ValueError("forward_read: reads past the window need a block without hooks after "
                                 "hook_resid_pre")
            return self(resid, resume=resume)[rows, local]
        resid = self.hook_resid_pre(resid)
        changed = (resid != resume.window("hook_resid_pre").to(resid.dtype)).any(-1)  # R window
        r_new, t_new = torch.nonzero(changed, as_tuple=True)
        at = (resume.start[:, None] + local).clamp(max=resume.seq_len - 1)  # absolute positions read
        inside = (local < width)[..., None]
        resid_q = torch.where(inside, resid[rows, local.clamp(max=width - 1)],
                              resume.cache[resume.scope + "hook_resid_pre"][resume.ex[:, None], at].to(resid.dtype))
        attn = self.attn.forward_read(self.ln1(resid[r_new, t_new]), r_new, resume.start[r_new] + t_new,
                                      self.ln1(resid_q), at, resume.sub("attn"))
        if self.parallel:
            return resid_q + attn + self.mlp(self.ln2(resid_q))
        resid_q = resid_q + attn
        return resid_q + self.mlp(self.ln2(resid_q))


class Transformer(LanguageModel):
    model_type = "transformer"
    config_class = TransformerConfig
    # nn.Embedding's own N(0, 1): with mamba_ssm's 0.02 next to PyTorch's default
    # Linear init, attention and MLP outputs drowned the token identity and a 2-layer
    # Transformer stayed at chance on AR (4000 steps at 0.25; with N(0, 1): 100% by
    # step 1250 on the demo setting).
    embed_init_std = 1.0

    def __init__(self, cfg: TransformerConfig | None = None, **overrides):
        cfg = cfg or TransformerConfig(**overrides)
        super().__init__(cfg)
        if cfg.positional == "learned":
            self.pos_embed = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model) * cfg.pos_init_std)
            self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.setup()

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        x = self.hook_embed(self.embed(tokens))
        if self.cfg.positional == "learned":
            if tokens.shape[1] > self.cfg.n_ctx:
                raise ValueError(f"sequence of {tokens.shape[1]} positions exceeds n_ctx={self.cfg.n_ctx}")
            x = x + self.hook_pos_embed(self.pos_embed[: tokens.shape[1]].expand_as(x))
        return x
