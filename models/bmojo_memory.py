"""B'MOJO's eidetic memory: innovation test, thresholded writes, memory selection.

The pieces of DESIGN §4 steps 2–4, as small functions plus one module:

- ``innovation_error(u, f, W_p)``: e_t = ‖u_t − W_p f_{t−1}‖² / d (f_{−1} = 0);
- ``standardize(e, eps)``: z_t = e_t / (ε + mean_{r≤t} e_r), a causal running mean;
- ``window_mask(L, window)``: query t sees s with t − w < s ≤ t;
- ``memory_mask(write, window, memory_size)``: query t sees the ``memory_size``
  most recent written s ≤ t − w (vectorized with cumulative write counts), and
  ``memory_mask_reference`` (a loop over queries, for tests);
- ``EideticMemory``: W_p with the hooks ``hook_fading``, ``hook_innovation``,
  ``hook_write`` and the innovation loss of the last forward.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from ssmlens.interp.hooks import HookPoint
from ssmlens.models.lm import ForwardLoss
from ssmlens.models.resume import Resume


def innovation_error(
    u: Float[Tensor, "batch pos d_model"], f: Float[Tensor, "batch pos d_model"], W_p: Tensor
) -> Float[Tensor, "batch pos"]:
    """e_t = ‖u_t − W_p f_{t−1}‖² / d_model, with f_{−1} = 0 (computed in fp32)."""
    f_prev = F.pad(f.float(), (0, 0, 1, 0))[:, :-1]  # f shifted right by one position
    pred = f_prev @ W_p.float().T
    return (u.float() - pred).pow(2).mean(-1)


def standardize(e: Float[Tensor, "batch pos"], eps: float) -> Float[Tensor, "batch pos"]:
    """z_t = e_t / (ε + mean_{r≤t} e_r): the error relative to the sequence so far."""
    count = torch.arange(1, e.shape[1] + 1, device=e.device, dtype=e.dtype)
    return e / (eps + e.cumsum(-1) / count)


def window_mask(L: int, window: int, device=None) -> Bool[Tensor, "query key"]:
    """True where query t sees key s through the window: t − window < s ≤ t."""
    t = torch.arange(L, device=device)
    lag = t[:, None] - t[None, :]
    return (lag >= 0) & (lag < window)


def memory_mask(write: Float[Tensor, "batch pos"], window: int, memory_size: int) -> Bool[Tensor, "batch query key"]:
    """True where query t sees key s through the eidetic memory.

    A token is written where ``write > 0.5``. For query t the memory holds the
    ``memory_size`` most recent written s ≤ t − window: with c the running count of
    writes, the rank of s is c[t − window] − c[s] (writes in (s, t − window]), and s
    is kept while its rank is below ``memory_size`` (a FIFO of written tokens that
    have left the window).
    """
    b, L = write.shape
    if memory_size <= 0:
        return torch.zeros(b, L, L, dtype=torch.bool, device=write.device)
    w = write > 0.5
    c = w.long().cumsum(-1)  # b s: writes in [0, s]
    t = torch.arange(L, device=write.device)
    edge = t - window  # newest position that has left query t's window
    eligible = t[None, :] <= edge[:, None]  # query key
    c_edge = c[:, edge.clamp(min=0)]  # b query
    rank = c_edge[:, :, None] - c[:, None, :]  # b query key
    return eligible[None] & w[:, None, :] & (rank < memory_size)


def memory_mask_reference(write: Tensor, window: int, memory_size: int) -> Tensor:
    """Loop version of ``memory_mask``: walk back from t − window, keep the first
    ``memory_size`` written tokens."""
    b, L = write.shape
    out = torch.zeros(b, L, L, dtype=torch.bool)
    for i in range(b):
        for t in range(L):
            kept = 0
            for s in range(t - window, -1, -1):
                if kept >= memory_size:
                    break
                if float(write[i, s]) > 0.5:
                    out[i, t, s] = True
                    kept += 1
    return out


class EideticMemory(nn.Module):
    """Innovation predictor W_p and the write decisions of one B'MOJO block.

    ``forward(u, f)`` fires ``hook_fading`` on f, ``hook_innovation`` on z_t and
    ``hook_write`` on the 0/1 writes (z_t > τ), and returns ``(fading, write)``
    after the hooks, so edits of any of them reach the attention. The predictor is
    trained through ``innovation_loss`` = mean e_t with u and f detached: it only
    moves W_p and never pushes the rest of the block towards being predictable.
    """

    innovation_loss = ForwardLoss()  # mean e_t of the last forward; None in a fresh copy

    def __init__(self, d_model: int, threshold: float, eps: float):
        super().__init__()
        self.threshold = float(threshold)
        self.eps = float(eps)
        # zero init: the predictor starts by predicting nothing (e_t = ‖u_t‖²/d)
        self.W_p = nn.Parameter(torch.zeros(d_model, d_model))
        self.hook_fading = HookPoint()
        self.hook_innovation = HookPoint()
        self.hook_write = HookPoint()
        self.innovation_loss: Tensor | None = None

    def fade(self, f: Tensor) -> Tensor:
        return self.hook_fading(f)

    def forward(
        self, u: Float[Tensor, "batch pos d_model"], f: Float[Tensor, "batch pos d_model"],
        resume: Resume | None = None, u_cached: Tensor | None = None,
    ) -> Float[Tensor, "batch pos"]:
        """Innovation scores and writes for block input u and fading tokens f.

        With ``resume`` (``ssmlens.models.resume``), u and f hold each row's window and
        ``u_cached`` ``[R, L, d_model]`` is the cached run's block input: errors are
        computed over the whole sequence with the window written in, then read there."""
        if resume is None:
            e = innovation_error(u.detach(), f.detach(), self.W_p)
            self.innovation_loss = e.mean()
            z = standardize(e.detach(), self.eps)
        else:
            f_all = resume.scatter(resume.full("hook_fading"), f.detach())
            e = innovation_error(resume.scatter(u_cached, u.detach()), f_all, self.W_p)
            self.innovation_loss = resume.gather(e).mean()
            z = resume.gather(standardize(e.detach(), self.eps))
        z = self.hook_innovation(z)
        return self.hook_write((z > self.threshold).float())
