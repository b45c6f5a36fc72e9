"""Switch mixture-of-experts feed-forward layer (Fedus et al., 2021), hooked.

x ``[b, L, d_model]`` -> router logits ``[b, L, E]`` (``hook_router_logits``) ->
p = softmax -> top-1 expert ``[b, L]`` (``hook_expert``, int64; −1 = no expert) ->
capacity, first come first served: expert i takes the token at position t when it
has taken fewer than C_t = ceil(capacity_factor · (t + 1) / E) tokens of the
sequence so far, else the token is dropped (``hook_drop``, float 1 = the token only
passes through the residual: over capacity or routed to no expert) ->
out_t = p_{i_t}(x_t) · FFN_{i_t}(x_t) for kept tokens, 0 for dropped ones
(``hook_expert_out``).

The budget C_t grows with the position, not with the sequence length L: Switch's
ceil(capacity_factor · L / E) per sequence is the budget of the whole sequence
(C_{L−1}), but made per prefix, so a token's fate depends only on earlier tokens of
its own sequence. The layer is causal, batch-independent and prefix-consistent
(logits of ``tokens[:, :k]`` are the first k logits of ``tokens``), also under
patching and ablation. Capacity is counted per sequence (not over the flattened
batch as in Switch's TPU implementation) for the same reason.

With n_t(i) the tokens expert i kept up to t and R_t(i) those routed to it,
n_t = min(n_{t−1} + [i_t = i], C_t), whose closed form
n_t = R_t + min(0, min_{s≤t}(C_s − R_s)) is a cumsum and a cummin
(``dispatch_mask``; ``dispatch_mask_reference`` is the loop it must equal).

Ablating expert e (its tokens go to the residual) is one hook::

    model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.moe.hook_expert", ablate_expert(e))])

The load-balancing loss of the last forward is α · E · Σ_i f_i · P_i, f_i the
fraction of tokens dispatched to expert i, P_i the mean router probability of i.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.models.lm import ForwardLoss
from ssmlens.models.resume import Resume


def load_balancing_loss(
    probs: Float[Tensor, "... expert"], expert: Int[Tensor, "..."], alpha: float = 0.01
) -> Tensor:
    """α · E · Σ_i f_i · P_i over all tokens; expert −1 (no expert) counts for none."""
    E = probs.shape[-1]
    probs = probs.reshape(-1, E).float()
    chosen = expert.reshape(-1)
    f = F.one_hot(chosen.clamp(min=0), E).float() * (chosen >= 0)[:, None]
    return alpha * E * (f.mean(0) * probs.mean(0)).sum()


def ablate_expert(e: int):
    """A ``hook_expert`` hook routing expert e's tokens to the residual."""
    return lambda expert, hook: expert.masked_fill(expert == e, -1)


def capacity(capacity_factor: float, L: int, n_experts: int) -> int:
    """Tokens an expert may take among the first L positions: ceil(capacity_factor · L / E)."""
    return math.ceil(capacity_factor * L / n_experts)


def budget(capacity_factor: float, L: int, n_experts: int, device=None) -> Int[Tensor, " pos"]:
    """C_t = ``capacity(capacity_factor, t + 1, n_experts)`` for t = 0 … L − 1 (int64)."""
    t = torch.arange(1, L + 1, dtype=torch.float64, device=device)
    return torch.ceil(t * capacity_factor / n_experts).long()


def dispatch_mask(expert: Int[Tensor, "batch pos"], n_experts: int, capacity_factor: float
                  ) -> Bool[Tensor, "batch pos"]:
    """True where the token is kept: routed to an expert that has taken fewer than C_t
    tokens before it (first come, first served; C_t from ``budget``)."""
    routed = F.one_hot(expert.clamp(min=0), n_experts) * (expert >= 0)[..., None]  # b L E
    R = routed.cumsum(1)  # routed to expert i up to t
    C = budget(capacity_factor, expert.shape[1], n_experts, expert.device)[None, :, None]
    kept_count = R + (C - R).cummin(1).values.clamp(max=0)  # n_t = R_t + min(0, min_{s≤t}(C_s − R_s))
    taken = kept_count.diff(dim=1, prepend=torch.zeros_like(kept_count[:, :1]))  # 1 where expert i took t
    return (expert >= 0) & (taken * routed).sum(-1).bool()


def dispatch_mask_reference(expert: Tensor, n_experts: int, capacity_factor: float) -> Tensor:
    """Loop version of ``dispatch_mask``: walk the positions, keep a token while its
    expert's count is below C_t."""
    b, L = expert.shape
    kept = torch.zeros(b, L, dtype=torch.bool)
    for row in range(b):
        counts = [0] * n_experts
        for t in range(L):
            i = int(expert[row, t])
            if i >= 0 and counts[i] < capacity(capacity_factor, t + 1, n_experts):
                kept[row, t] = True
                counts[i] += 1
    return kept


class SwitchMoE(nn.Module):
    balance_loss = ForwardLoss()  # α·E·Σ fᵢ·Pᵢ of the last forward; None in a fresh copy

    def __init__(self, d_model: int, d_ff: int, n_experts: int, capacity_factor: float = 1.25,
                 alpha: float = 0.01, bias: bool = True):
        super().__init__()
        self.n_experts, self.capacity_factor, self.alpha = n_experts, float(capacity_factor), float(alpha)
        self.router = nn.Linear(d_model, n_experts, bias=False)
        nn.init.normal_(self.router.weight, std=0.02)
        # expert FFNs stacked: expert i is gelu(x @ W_in[i] + b_in[i]) @ W_out[i] + b_out[i]
        bi, bo = 1 / math.sqrt(d_model), 1 / math.sqrt(d_ff)  # nn.Linear's init scale
        self.W_in = nn.Parameter(torch.empty(n_experts, d_model, d_ff).uniform_(-bi, bi))
        self.W_out = nn.Parameter(torch.empty(n_experts, d_ff, d_model).uniform_(-bo, bo))
        self.b_in = nn.Parameter(torch.empty(n_experts, d_ff).uniform_(-bi, bi)) if bias else None
        self.b_out = nn.Parameter(torch.empty(n_experts, d_model).uniform_(-bo, bo)) if bias else None
        for name in ("router_logits", "expert", "drop", "expert_out"):
            setattr(self, f"hook_{name}", HookPoint())
        self.balance_loss: Tensor | None = None

    def expert_ffn(self, i: int, x: Tensor) -> Tensor:
        h = x @ self.W_in[i]
        if self.b_in is not None:
            h = h + self.b_in[i]
        h = F.gelu(h) @ self.W_out[i]
        return h + self.b_out[i] if self.b_out is not None else h

    def forward(self, x: Float[Tensor, "batch pos d_model"], resume: Resume | None = None
                ) -> Float[Tensor, "batch pos d_model"]:
        """Switch layer output (0 at dropped tokens); add it to the residual.

        With ``resume`` (``ssmlens.models.resume``), x holds each row's window; capacity is
        counted with the cached experts before the window."""
        b, L, d = x.shape
        logits = self.hook_router_logits(self.router(x))
        probs = logits.float().softmax(-1)
        expert = self.hook_expert(probs.argmax(-1))
        if expert.dtype != torch.long or bool(((expert < -1) | (expert >= self.n_experts)).any()):
            raise ValueError(f"hook_expert must hold int64 experts in [-1, {self.n_experts}), got {expert.dtype}")
        self.balance_loss = load_balancing_loss(probs, expert, self.alpha)
        if resume is None:
            kept = dispatch_mask(expert, self.n_experts, self.capacity_factor)
        else:
            every = resume.scatter(resume.full("hook_expert"), expert)
            kept = resume.gather(dispatch_mask(every, self.n_experts, self.capacity_factor))
        kept = self.hook_drop((~kept).to(x.dtype)) < 0.5
        gate = probs.gather(-1, expert.clamp(min=0)[..., None])[..., 0]  # b L
        flat_x, flat_e, flat_k = x.reshape(-1, d), expert.reshape(-1), kept.reshape(-1)
        out = torch.zeros_like(flat_x)
        for i in range(self.n_experts):
            idx = torch.nonzero((flat_e == i) & flat_k).squeeze(-1)
            if idx.numel():
                out = out.index_copy(0, idx, self.expert_ffn(i, flat_x[idx]))
        out = out.reshape(b, L, d) * gate[..., None].to(x.dtype)
        return self.hook_expert_out(out)
