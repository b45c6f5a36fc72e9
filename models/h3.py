"""H3 (Fu et al. 2023, "Hungry Hungry Hippos"), one mixer per block, fully hooked.

As zoology's ``H3`` (S4D diagonal kernel, shift kernel with B = e₁), for the block
input u ``[b, L, d_model]``, heads of ``head_dim`` = p channels (H = d_model / p):

1. q, k, v = W_q u, W_k u, W_v u
2. shift SSM on k (a shift register of N = ``d_state`` taps):
   k̃_t = Σ_{j<N} c_j ⊙ k_{t−j} + D_shift ⊙ k_t
3. kv_t = k̃_t ⊗ v_t per head: ``[h, p, p]`` channels (p = 1: k̃_t ⊙ v_t)
4. diagonal SSM over kv (``h3_ssm.DiagonalSSM``, one per head, shared by its p²
   channels): h_t = Ā ⊙ h_{t−1} + B̄ kv_t, y_t = 2·Re(C·h_t) + D ⊙ kv_t;
   computed as the causal convolution y = K * kv + D ⊙ kv by FFT, or recurrently
   when ``hook_ssm_state`` is listened to
5. o_t[h, j] = Σ_i q_t[h, i] · y_t[h, i, j]
6. out = W_o o

Hooks (``blocks.{l}.mixer.``): ``hook_q``, ``hook_k``, ``hook_v`` ``[b, pos, d_model]``,
``hook_shift_out`` (k̃) ``[b, pos, d_model]``, ``hook_kv`` ``[b, pos, d_kv]``
(d_kv = d_model·p, channel order (head, i, j)), ``hook_ssm_state`` ``[b, pos, d_kv,
d_state]`` (real layout of the complex h: ``h3_ssm.states_as_real``; only when
listened to), ``hook_ssm_out`` (y) ``[b, pos, d_kv]``, ``hook_out``.

An edit of ``hook_ssm_state`` propagates as for Mamba: h is replaced at the edited
positions and later states evolve from it with the same Ā; y moves by 2·Re(C·e).
``conv_kernels(L)`` returns both convolutions as kernels ``[channels, L]`` (lag 0
includes the skip D), for token-mixing matrices: with T the causal Toeplitz matrix of a
kernel (``ssmlens.kernels.causal_toeplitz``), k̃ = T_shift k and, per head,
o_t[j] = Σ_i q_t[i] Σ_{s≤t} T_ssm[t, s] k̃_s[i] v_s[j] (gates from ``hook_q``,
``hook_shift_out``, ``hook_v``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import einsum, rearrange, repeat
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.kernels.fft_conv import fft_causal_conv
from ssmlens.models.h3_ssm import DiagonalSSM, states_as_real, states_from_real
from ssmlens.models.zoo_block import ZooConfig, ZooLM


@dataclass(kw_only=True)
class H3Config(ZooConfig):
    d_state: int = 16  # shift-SSM taps, and real numbers of each diagonal-SSM state (d_state/2 modes)
    head_dim: int = 1  # p: kv is the outer product k̃ ⊗ v per head (zoology's default 1)
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    def check(self) -> None:
        if int(self.d_state) < 2 or self.d_state % 2:
            raise ValueError(f"d_state must be even and >= 2, got {self.d_state}")
        if int(self.head_dim) < 1 or self.d_model % self.head_dim:
            raise ValueError(f"head_dim={self.head_dim} must be >= 1 and divide d_model={self.d_model}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min/dt_max must satisfy 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")


class H3Mixer(nn.Module):
    def __init__(self, cfg: H3Config, layer: int = 0):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.d_model, cfg.head_dim
        self.n_heads, self.head_dim = d // p, p
        self.W_q, self.W_k, self.W_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        # the shift SSM is a causal FIR of d_state taps (nn.Conv1d's init, as zoology)
        self.shift_conv = nn.Conv1d(d, d, cfg.d_state, groups=d, padding=cfg.d_state - 1, bias=False)
        self.D_shift = nn.Parameter(torch.randn(d))
        self.ssm = DiagonalSSM(self.n_heads, cfg.d_state, cfg.dt_min, cfg.dt_max)
        self.D = nn.Parameter(torch.randn(self.n_heads))
        self.out_proj = nn.Linear(d, d)
        for name in ("q", "k", "v", "shift_out", "kv", "ssm_state", "ssm_out", "out"):
            setattr(self, f"hook_{name}", HookPoint())

    @property
    def d_kv(self) -> int:
        return self.n_heads * self.head_dim ** 2

    def forward(self, u: Tensor) -> Tensor:
        """u ``[b, L, d_model]`` -> ``[b, L, d_model]`` (steps 1–6 of the module docstring)."""
        L, p = u.shape[1], self.head_dim
        # 1. projections
        q, k, v = self.hook_q(self.W_q(u)), self.hook_k(self.W_k(u)), self.hook_v(self.W_v(u))
        # 2. shift SSM
        shifted = rearrange(self.shift_conv(rearrange(k, "b l d -> b d l"))[..., :L], "b d l -> b l d")
        k_shift = self.hook_shift_out(shifted + self.D_shift * k)
        # 3. kv = k̃ ⊗ v per head
        kv = einsum(rearrange(k_shift, "b l (h i) -> b l h i", i=p), rearrange(v, "b l (h j) -> b l h j", j=p),
                    "b l h i, b l h j -> b l h i j")
        kv = self.hook_kv(rearrange(kv, "b l h i j -> b l (h i j)"))
        # 4. diagonal SSM (per head; its p² channels are batch for the SSM)
        per_head = rearrange(kv, "b l (h i j) -> (b i j) l h", i=p, j=p)
        skip = per_head * self.D
        if self.hook_ssm_state.listened:
            y = self._states_through_hook(per_head, kv.shape[0]) + skip
        else:
            y = fft_causal_conv(per_head, self.ssm.kernel(L)) + skip
        y = self.hook_ssm_out(rearrange(y, "(b i j) l h -> b l (h i j)", i=p, j=p))
        # 5. multiplication by q
        o = einsum(rearrange(q, "b l (h i) -> b l h i", i=p), rearrange(y, "b l (h i j) -> b l h i j", i=p, j=p),
                   "b l h i, b l h i j -> b l h j")
        # 6. output projection
        return self.hook_out(self.out_proj(rearrange(o, "b l h j -> b l (h j)")))

    def _states_through_hook(self, x: Tensor, batch: int) -> Tensor:
        """The diagonal SSM run recurrently on x ``[(b i j), L, head]``: fire
        ``hook_ssm_state`` on h (``[b, L, d_kv, d_state]``, real layout) and return
        2·Re(C·(h + e)) with e the propagated edit (``DiagonalSSM.carried``), as
        ``[(b i j), L, head]``. A copy goes to the hook (in-place edits are edits)."""
        p = self.head_dim
        h = self.ssm.states(x)  # (b i j) l h m, complex
        real = rearrange(states_as_real(h), "(b i j) l h n -> b l (h i j) n", b=batch, i=p, j=p)
        edited_real = self.hook_ssm_state(real.clone())
        needs_grad = torch.is_grad_enabled() and edited_real.requires_grad
        y = self.ssm.read(h)
        if not needs_grad and torch.equal(edited_real, real):
            return y
        diff_real = edited_real - real
        edited = (diff_real != 0).flatten(2).any(-1)  # b L
        if not bool(edited.any()) and not needs_grad:
            return y
        diff = states_from_real(rearrange(diff_real, "b l (h i j) n -> (b i j) l h n", i=p, j=p))
        e = self.ssm.carried(diff, repeat(edited, "b l -> (b i j) l", i=p, j=p))
        return y + self.ssm.read(e)

    def conv_kernels(self, L: int) -> dict[str, Tensor]:
        """Both convolutions as causal kernels, lag 0 including the skip: ``"shift"``
        ``[d_model, L]`` (k -> k̃) and ``"ssm"`` ``[d_kv, L]`` (kv -> y, channel order
        (head, i, j)); ``ssmlens.kernels.fft_conv.causal_toeplitz`` turns them into the
        [channel, t, s] mixing matrices."""
        taps = self.shift_conv.weight[:, 0].flip(-1)  # d N: tap j multiplies k_{t−j}
        shift = torch.zeros(taps.shape[0], L, dtype=taps.dtype, device=taps.device)
        n = min(L, taps.shape[1])
        shift[:, :n] = taps[:, :n]
        shift[:, 0] = shift[:, 0] + self.D_shift
        ssm = self.ssm.kernel(L).clone()
        ssm[:, 0] = ssm[:, 0] + self.D
        p = self.head_dim
        return {"shift": shift, "ssm": repeat(ssm, "h l -> (h i j) l", i=p, j=p)}


class H3(ZooLM):
    model_type = "h3"
    config_class = H3Config
    mixer_class = H3Mixer
