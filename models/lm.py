"""Base language model: embedding, blocks, final norm, unembedding, checked inputs.

Subclasses build ``self.blocks`` and define ``config_class`` / ``model_type``; this
class provides the forward over tokens with the shared hooks (``hook_embed``) and
the checks every model applies to its input, the loss, and save/load.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from ssmlens.interp.hooks import HookedModel, HookPoint
from ssmlens.models.norm import make_norm
from ssmlens.models.text import TextMixin


class _Held:
    """The value behind a ``ForwardLoss`` attribute. Copies (``copy.deepcopy``, pickle)
    start empty: the tensor belongs to the original's last forward and its autograd
    graph, which torch cannot copy, and a copy has not run that forward."""

    __slots__ = ("value",)

    def __init__(self, value: Tensor | None = None):
        self.value = value

    def __deepcopy__(self, memo) -> "_Held":
        return _Held()

    def __reduce__(self):
        return (_Held, ())


class ForwardLoss:
    """A module attribute holding a loss of the module's last forward (MoE balance,
    B'MOJO innovation), which ``auxiliary_losses()`` collects for the trainer.

    Declared on the class (``balance_loss = ForwardLoss()``), set and read as a plain
    attribute. A deep copy of the module gets None there instead of failing: a loss
    with a graph is not a leaf tensor, and ``copy.deepcopy`` refuses those.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}_held"

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        held = obj.__dict__.get(self.slot)
        return None if held is None else held.value

    def __set__(self, obj: Any, value: Tensor | None) -> None:
        obj.__dict__[self.slot] = _Held(value)


class LanguageModel(TextMixin, HookedModel):
    model_type: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    embed_init_std: ClassVar[float] = 0.02  # mamba_ssm's embedding init

    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=self.embed_init_std)
        self.hook_embed = HookPoint()
        self.ln_final = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.unembed = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    # -- input ------------------------------------------------------------
    def check_tokens(self, tokens: Tensor) -> Tensor:
        """Validate token ids; a 1-D sequence becomes a batch of one."""
        if not isinstance(tokens, Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of ids, got {type(tokens).__name__}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.shape[1] == 0:
            raise ValueError("tokens has no positions")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.cfg.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.cfg.vocab_size}), got range [{lo}, {hi}]")
        return tokens.long()

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        return self.hook_embed(self.embed(tokens))

    def unembed_resid(self, resid: Tensor) -> Tensor:
        return self.unembed_normed(self.ln_final(resid))

    def unembed_normed(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Logits of final-normed residuals (tied or untied unembedding)."""
        return x @ self.embed.weight.T if self.unembed is None else self.unembed(x)

    # -- TransformerLens' names for the unembedding (ActivationCache helpers use them) --
    @property
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        """The unembedding matrix: logits = ln_final(resid) @ W_U (+ b_U, which is 0)."""
        return (self.embed.weight if self.unembed is None else self.unembed.weight).T

    @property
    def b_U(self) -> Float[Tensor, " vocab"]:
        """The unembedding bias: zeros (no model here has one)."""
        return self.W_U.new_zeros(self.cfg.vocab_size)

    def tokens_to_residual_directions(self, tokens: int | Tensor) -> Tensor:
        """Columns of ``W_U`` for token ids: ``[d_model]`` for one id, ``[*tokens.shape,
        d_model]`` for a tensor (TransformerLens' convention; our norm weights are not
        folded into W_U, ``ActivationCache.apply_ln_to_stack`` applies them instead)."""
        if isinstance(tokens, str):
            return self.W_U[:, self.to_single_token(tokens)]
        if isinstance(tokens, Tensor) and tokens.numel() > 1:
            return rearrange(self.W_U[:, tokens.long()], "d_model ... -> ... d_model")
        return self.W_U[:, int(tokens)]

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        return_type: str | None = "logits",
        loss_mask: Tensor | None = None,
    ) -> Float[Tensor, "batch pos vocab"] | Tensor | tuple | None:
        """``return_type``: "logits" (default), "loss" (mean next-token CE, over
        ``loss_mask`` positions when given), "both" ((logits, loss)), "answers"
        ((logits [n_supervised, vocab], targets [n_supervised]) only where ``loss_mask[:, t]``
        is set: what training on answers needs, without the [batch, pos, vocab] tensor
        that dominates a step when the vocabulary is large) or None."""
        if return_type not in ("logits", "loss", "both", "answers", None):
            raise ValueError(
                f"return_type must be 'logits', 'loss', 'both', 'answers' or None, got {return_type!r}")
        tokens = self.check_tokens(tokens)
        if loss_mask is not None and loss_mask.shape != tokens.shape:
            raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} != tokens shape {tuple(tokens.shape)}")
        if return_type == "answers" and loss_mask is None:
            raise ValueError("return_type='answers' needs a loss_mask saying which positions are answers")
        resid = self.run_blocks(self.embed_tokens(tokens))
        if return_type is None:
            return None
        if return_type == "answers":
            rows = loss_mask[:, :-1].bool()
            return self.unembed_normed(self.ln_final(resid)[:, :-1][rows]), tokens[:, 1:][rows]
        logits = self.unembed_resid(resid)
        if return_type == "logits":
            return logits
        loss = next_token_loss(logits, tokens, loss_mask)
        return loss if return_type == "loss" else (logits, loss)

    def run_blocks(self, resid: Tensor) -> Tensor:
        for block in self.blocks:
            resid = block(resid)
        return resid

    def auxiliary_losses(self) -> dict[str, Tensor]:
        """Extra training losses from the last forward (MoE balance, B'MOJO predictor);
        the trainer adds them to the task loss. None for plain models."""
        return {}

    # -- checkpoints ----------------------------------------------------------
    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def save(self, directory: str | Path) -> Path:
        from ssmlens.models.checkpoint import save_model

        return save_model(self, directory)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "LanguageModel":
        from ssmlens.models.checkpoint import load_model

        model = load_model(directory, device=device)
        if not isinstance(model, cls):
            raise TypeError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    @classmethod
    def from_hf(cls, path: str | Path, device: str | torch.device = "cpu") -> "LanguageModel":
        """Load a local Hugging Face checkpoint directory (``config.json`` + safetensors)
        of this model's family, e.g. ``Mamba.from_hf("mamba-130m-hf")``."""
        from ssmlens.models.checkpoint import read_hf_config
        from ssmlens.models.registry import hf_importer

        hf_type = read_hf_config(path).get("model_type", "?")
        model = hf_importer(hf_type, source=str(path))(path, device=device)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a Hugging Face {hf_type!r} model ({type(model).__name__}), "
                            f"not a {cls.__name__}")
        return model


def next_token_loss(logits: Tensor, tokens: Tensor, loss_mask: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of predicting tokens[:, t+1] at t, over ``loss_mask[:, t]``."""
    pred = logits[:, :-1].float()
    target = tokens[:, 1:]
    if loss_mask is None:
        return F.cross_entropy(pred.flatten(0, 1), target.flatten())
    if loss_mask.shape != tokens.shape:
        raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} != tokens shape {tuple(tokens.shape)}")
    m = loss_mask[:, :-1].bool()
    return F.cross_entropy(pred[m], target[m])
