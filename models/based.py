"""Based (Arora et al. 2024, "Simple linear attention language models balance the
recall-throughput tradeoff"), one mixer per block, fully hooked.

As in zoology's Based configs (``BaseConv`` + ``Based`` with the ``taylor_exp`` feature
map, plus ``SlidingAttn``), for the block input u ``[b, L, d_model]``:

1. gated short convolution (BaseConv): c = conv_K(u) (depthwise, causal, kernel
   ``d_conv``); s = u + c ⊙ (W_g u + b_g)
2. projections per head: q = W_q s, k = W_k s ∈ R^f (f = ``feature_dim``),
   v = W_v s ∈ R^{d_head}
3. Taylor feature map: φ(q), φ(k) ∈ R^{1+f+f²}, φ(q)·φ(k) = 1 + q·k/√f + (q·k)²/(2f)
4. kv-state S_t = Σ_{s≤t} φ(k_s) v_sᵀ and normalizer n_t = φ(q_t)·Σ_{s≤t} φ(k_s)
5. linear attention y_t = φ(q_t)ᵀ S_t / (n_t + ε)
6. sliding-window softmax attention over s: P[t, r] = softmax_{t−w<r≤t}(q'_t·k'_r/√d_head),
   w_t = Σ_r P[t, r] v'_r  (q', k', v' = W'_{q,k,v} s; none when ``window`` = 0)
7. out = W_o [y_t ; w_t]

Hooks (``blocks.{l}.mixer.``): ``hook_x`` (u), ``hook_conv`` (c), ``hook_short`` (s),
``hook_q``/``hook_k`` ``[b, pos, head, feature_dim]``, ``hook_v`` ``[b, pos, head,
d_head]``, ``hook_phi_q``/``hook_phi_k`` ``[b, pos, head, 1+f+f²]``, ``hook_kv_state``
``[b, pos, head, 1+f+f², d_head]`` (only when listened to), ``hook_normalizer``
``[b, pos, head]``, ``hook_linear_out`` ``[b, pos, head, d_head]``,
``hook_window_q/k/v``, ``hook_window_pattern`` ``[b, head, q, k]`` (only when listened
to), ``hook_window_out``, ``hook_out``.

Steps 4–5 run in the quadratic form (``based_attention.linear_attention_parallel``)
unless ``hook_kv_state`` is listened to. An edit of the kv-state propagates like an
edit of Mamba's ``hook_ssm_state``: S_t is replaced at the edited positions and later
states evolve from it (S has no decay, so the difference is carried unchanged until
the next edited position); the normalizer is its own hook and is not changed by it.

Token mixing (what ``ssmlens.probes.mixing`` needs, all from hooks): per head,
y_t = Σ_{s≤t} M[t, s] v_s with M[t, s] = φ(q_t)·φ(k_s) / (n_t + ε) (``hook_phi_q``,
``hook_phi_k``, ``hook_normalizer``, ``hook_v``), and w_t = Σ_s P[t, s] v'_s
(``hook_window_pattern``, ``hook_window_v``); ``hook_out`` = W_o [y ; w].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import einsum, rearrange
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.models.based_attention import (
    feature_size, kv_states, linear_attention_parallel, read_states, taylor_features, window_attention, window_scores,
)
from ssmlens.models.zoo_block import ZooConfig, ZooLM


@dataclass(kw_only=True)
class BasedConfig(ZooConfig):
    feature_dim: int = 16  # f: q and k are projected to f dims per head before φ
    n_heads: int = 1  # linear-attention and window heads (zoology's Based configs: 1)
    window: int = 4  # sliding-window width w (keys t−w < r ≤ t); 0: no window attention
    d_conv: int = 3  # BaseConv kernel size (zoology: 3)
    eps: float = 1e-12

    def check(self) -> None:
        for name in ("feature_dim", "n_heads", "d_conv"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.window) < 0:
            raise ValueError(f"window must be >= 0 (0: no sliding window), got {self.window}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")


class BasedMixer(nn.Module):
    conv_activation = "identity"  # BaseConv's conv has no activation (probes.ablation_structural)

    def __init__(self, cfg: BasedConfig, layer: int = 0):
        super().__init__()
        self.cfg = cfg
        d, h, f = cfg.d_model, cfg.n_heads, cfg.feature_dim
        self.n_heads, self.d_head, self.feature_dim = h, d // h, f
        self.conv1d = nn.Conv1d(d, d, cfg.d_conv, groups=d, padding=cfg.d_conv - 1)
        self.gate_proj = nn.Linear(d, d)
        self.W_q = nn.Linear(d, h * f, bias=False)
        self.W_k = nn.Linear(d, h * f, bias=False)
        self.W_v = nn.Linear(d, d, bias=False)
        names = ["x", "conv", "short", "q", "k", "v", "phi_q", "phi_k", "kv_state", "normalizer", "linear_out", "out"]
        if cfg.window:
            self.W_window = nn.Linear(d, 3 * d, bias=False)
            names += ["window_q", "window_k", "window_v", "window_pattern", "window_out"]
        self.out_proj = nn.Linear(2 * d if cfg.window else d, d, bias=False)
        for name in names:
            setattr(self, f"hook_{name}", HookPoint())

    @property
    def n_features(self) -> int:
        return feature_size(self.feature_dim)

    def forward(self, u: Tensor) -> Tensor:
        """u ``[b, L, d_model]`` -> ``[b, L, d_model]`` (steps 1–7 of the module docstring)."""
        cfg, L = self.cfg, u.shape[1]
        # 1. gated short convolution
        x = self.hook_x(u)
        c = self.hook_conv(rearrange(self.conv1d(rearrange(x, "b l d -> b d l"))[..., :L], "b d l -> b l d"))
        s = self.hook_short(x + c * self.gate_proj(x))
        # 2. projections
        q = self.hook_q(rearrange(self.W_q(s), "b l (h f) -> b l h f", h=self.n_heads))
        k = self.hook_k(rearrange(self.W_k(s), "b l (h f) -> b l h f", h=self.n_heads))
        v = self.hook_v(rearrange(self.W_v(s), "b l (h e) -> b l h e", h=self.n_heads))
        # 3. feature map
        phi_q = self.hook_phi_q(taylor_features(q))
        phi_k = self.hook_phi_k(taylor_features(k))
        # 4. kv-state (quadratic form unless listened to) and normalizer
        numerator, normalizer = linear_attention_parallel(phi_q, phi_k, v)
        if self.hook_kv_state.listened:
            numerator = self._states_through_hook(phi_q, phi_k, v, numerator)
        normalizer = self.hook_normalizer(normalizer)
        # 5. linear attention
        y = self.hook_linear_out(numerator / (normalizer[..., None] + cfg.eps))
        parts = [y]
        # 6. sliding-window attention
        if cfg.window:
            parts.append(self._window(s))
        # 7. output projection
        return self.hook_out(self.out_proj(rearrange(torch.cat(parts, dim=-1), "b l h e -> b l (h e)")))

    def _window(self, s: Tensor) -> Tensor:
        """Sliding-window softmax attention over s; the L × L pattern is materialized only
        when ``hook_window_pattern`` is listened to (else each query's w keys are gathered)."""
        wq, wk, wv = rearrange(self.W_window(s), "b l (three h e) -> three b l h e", three=3, h=self.n_heads)
        wq, wk, wv = self.hook_window_q(wq), self.hook_window_k(wk), self.hook_window_v(wv)
        if self.hook_window_pattern.listened:
            pattern = self.hook_window_pattern(window_scores(wq, wk, self.cfg.window).softmax(dim=-1))
            out = einsum(pattern, wv, "b h q k, b k h e -> b q h e")
        else:
            out = window_attention(wq, wk, wv, self.cfg.window)
        return self.hook_window_out(out)

    def _states_through_hook(self, phi_q: Tensor, phi_k: Tensor, v: Tensor, numerator: Tensor) -> Tensor:
        """Fire ``hook_kv_state`` on S ``[b, L, head, phi, d_head]`` and fold an edit into
        the numerator φ(q_t)ᵀS_t.

        e_t = a_t·e_{t−1} + (S'_t − S_t) with a_t = 1 except 0 where S was edited (S has
        no decay): a cumulative sum restarted at each edited position. S + e is the
        state sequence with S replaced there, and numerator + φ(q)ᵀe its readout. As
        for Mamba, the gradient with respect to the hooked S is then the total
        derivative (S_t alone overridden), which attribution patching needs."""
        S = kv_states(phi_k, v)
        # a copy: a hook that edits in place must still be seen as an edit
        S_edit = self.hook_kv_state(S.clone())
        needs_grad = torch.is_grad_enabled() and S_edit.requires_grad
        if not needs_grad and torch.equal(S_edit, S):
            return numerator
        diff = S_edit - S
        edited = (diff != 0).flatten(2).any(-1)  # b L
        if not bool(edited.any()) and not needs_grad:
            return numerator
        return numerator + read_states(phi_q, restarted_cumsum(diff, edited))


def restarted_cumsum(diff: Tensor, restart: Tensor) -> Tensor:
    """e_t = Σ_{p(t)≤r≤t} diff_r along axis 1, where p(t) is the last position ≤ t with
    ``restart`` set (0 when none): the recurrence e_t = a_t·e_{t−1} + diff_t with
    a ∈ {0, 1} (0 at restarts). diff ``[b, L, ...]``, restart bool ``[b, L]``."""
    total = diff.cumsum(dim=1)
    t = torch.arange(diff.shape[1], device=diff.device)
    before = torch.where(restart, t, -1).cummax(dim=1).values - 1  # b L: last restart − 1
    rows = torch.arange(diff.shape[0], device=diff.device)[:, None]
    carried = total[rows, before.clamp(min=0)]
    keep = (before >= 0).to(diff.dtype).reshape(*before.shape, *([1] * (diff.ndim - 2)))
    return total - carried * keep


class Based(ZooLM):
    model_type = "based"
    config_class = BasedConfig
    mixer_class = BasedMixer
