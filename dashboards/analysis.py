"""Numbers the pages derive from stored arrays: pure functions of numpy arrays of one
example (no batch axis), so they are tested directly and cost nothing to import.

- ``memory_horizon``: 1/(Δ·|A|), the number of tokens over which a state entry decays
  by a factor e (Mamba's effective memory length per channel and state);
- ``implicit_attention``: Mamba's hidden attention matrix α[t, s] (Ali et al., 2024):
  the weight the output at t gives the input at s through the scan,
  α[t, s, d] = Σ_n C[t, n] · exp(Σ_{r=s+1..t} Δ[r, d]·A[d, n]) · Δ[s, d]·B[s, n], s ≤ t,
  reduced over channels (computed by ``ssmlens.probes.mixing_selective``, the token-mixing
  view of the selective scan, from the stored arrays: no model is built);
- ``pca_2d``: a 2-D projection of a trajectory of states;
- ``split_bmojo`` / ``memory_occupancy``: B'MOJO's window / eidetic / fading columns
  (the layout of ``ssmlens.models.bmojo_attention``, redone in numpy so that no model is
  imported at request time) and how full its eidetic memory is at each position.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

_ONE_THREAD = threading.Lock()


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on the calling thread only, one heavy computation at a time.

    A dashboard server answers several callbacks at once; letting each matmul or
    eigensolver also spread over every core makes them contend (on a loaded 2-core
    machine, 10x slower). The lock keeps concurrent callers from restoring each
    other's thread count wrongly. Denormal numbers (decays of e^-700 and below) are
    flushed to zero meanwhile: arithmetic on them is ~100x slower and they draw as 0.
    """
    import torch

    with _ONE_THREAD:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        torch.set_flush_denormal(True)  # this thread's FTZ/DAZ flags only
        try:
            yield
        finally:
            torch.set_flush_denormal(False)
            torch.set_num_threads(before)


def mean_delta(delta: np.ndarray) -> np.ndarray:
    """``[pos, d_inner]`` -> mean Δ over channels ``[pos]``."""
    return np.asarray(delta, dtype=np.float64).mean(axis=-1)


def state_norm(states: np.ndarray) -> np.ndarray:
    """``[pos, d_inner, d_state]`` -> ‖h_t‖ (Frobenius) ``[pos]``."""
    h = np.asarray(states, dtype=np.float64)
    return np.sqrt((h.reshape(h.shape[0], -1) ** 2).sum(axis=1))


def memory_horizon(delta: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Effective memory horizons in tokens for one example.

    ``delta [pos, d_inner]``, ``A [d_inner, d_state]`` (negative). Returns
    ``per_state [d_inner, d_state]`` = 1/(mean_t Δ[t, d] · |A[d, n]|) and
    ``per_channel [d_inner]`` = the longest of its states (the slowest decay, which
    bounds how long channel d can hold anything).
    """
    d = np.asarray(delta, dtype=np.float64).mean(axis=0)  # [d_inner]
    rate = d[:, None] * np.abs(np.asarray(A, dtype=np.float64))  # [d_inner, d_state]
    with np.errstate(divide="ignore"):
        per_state = np.where(rate > 0, 1.0 / rate, np.inf)
    return per_state, per_state.max(axis=1)


def channel_order(delta: np.ndarray, by: str, horizon: np.ndarray | None = None) -> np.ndarray:
    """Channel indices sorted for display: "index", "delta" (mean Δ, largest first) or
    "horizon" (longest memory first)."""
    n = np.asarray(delta).shape[-1]
    if by == "delta":
        return np.argsort(-np.asarray(delta, dtype=np.float64).mean(axis=0), kind="stable")
    if by == "horizon" and horizon is not None:
        return np.argsort(-np.nan_to_num(horizon, posinf=np.finfo(float).max), kind="stable")
    return np.arange(n)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x [points, features]`` projected on their first two principal axes.
    Returns ``(coords [points, 2], explained variance ratio [2])``."""
    import torch

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    centered = x - x.mean(axis=0, keepdims=True)
    if len(x) < 2 or not np.any(centered):
        return np.zeros((len(x), 2)), np.zeros(2)
    # Through the Gram matrix (points × points, a few hundred): its eigenvectors are the
    # left singular vectors of the data, at a fraction of the cost of an SVD of the
    # points × features matrix (thousands of features).
    with one_thread():
        c = torch.from_numpy(centered)
        var, u = torch.linalg.eigh(c @ c.T)  # ascending
    var, u = np.clip(var.numpy()[::-1], 0, None), u.numpy()[:, ::-1]
    k = min(2, len(var))
    coords = np.zeros((len(x), 2))
    coords[:, :k] = u[:, :k] * np.sqrt(var[:k])
    ratio = np.zeros(2)
    ratio[:k] = var[:k] / var.sum() if var.sum() > 0 else 0
    return coords, ratio


def implicit_attention(delta: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray,
                       reduce: str = "abs_mean") -> np.ndarray:
    """Mamba's implicit attention ``[query t, key s]`` for one example, reduced over channels
    (``ssmlens.probes.mixing_selective.implicit_attention``, the token-mixing view of the
    selective scan), on one thread with denormals flushed (``one_thread``).

    ``delta [L, D]``, ``A [D, N]``, ``B``/``C [L, N]``. ``reduce``: "abs_mean" or "mean".
    """
    from ssmlens.probes.mixing_selective import implicit_attention as compute

    with one_thread():
        return compute(delta, A, B, C, reduce)


def implicit_attention_reference(delta, A, B, C, reduce: str = "abs_mean") -> np.ndarray:
    """Loop version of ``implicit_attention`` (tests)."""
    from ssmlens.probes.mixing_selective import implicit_attention_reference as reference

    return reference(delta, A, B, C, reduce)


class BMojoParts(NamedTuple):
    window: np.ndarray  # [..., q, L]: token columns inside the query's window, 0 elsewhere
    memory: np.ndarray  # [..., q, L]: token columns older than the window (eidetic memory)
    fading: np.ndarray  # [..., q]: weight of the query's own fading token
    window_mask: np.ndarray  # [q, L] bool


def window_mask(L: int, window: int) -> np.ndarray:
    """True where query t sees key s through the window: t − window < s ≤ t."""
    lag = np.arange(L)[:, None] - np.arange(L)[None, :]
    return (lag >= 0) & (lag < window)


def split_bmojo(pattern: np.ndarray, window: int) -> BMojoParts:
    """A B'MOJO pattern ``[..., L, L + 1]`` (token columns, then the fading column)
    split into window / memory / fading parts; the three sum to each row's total."""
    pattern = np.asarray(pattern)
    L = pattern.shape[-2]
    if pattern.shape[-1] != L + 1:
        raise ValueError(f"a B'MOJO pattern has L + 1 = {L + 1} key columns, got shape {pattern.shape}")
    tokens = pattern[..., :L]
    wmask = window_mask(L, int(window))
    return BMojoParts(tokens * wmask, tokens * ~wmask, pattern[..., L], wmask)


def memory_occupancy(write: np.ndarray, window: int, memory_size: int) -> np.ndarray:
    """Tokens in query t's eidetic memory ``[pos]``: written tokens s ≤ t − window, at most
    ``memory_size`` (the FIFO of ``ssmlens.models.bmojo_memory.memory_mask``)."""
    w = np.asarray(write) > 0.5
    count = np.cumsum(w)  # writes in [0, s]
    t = np.arange(len(w))
    edge = t - int(window)
    left = np.where(edge >= 0, count[np.clip(edge, 0, None)], 0)
    return np.minimum(left, int(memory_size))


def head_mean(pattern: np.ndarray, head: str | int | None) -> np.ndarray:
    """``[head, q, k]`` -> one head's ``[q, k]`` or the mean over heads ("mean"/None)."""
    p = np.asarray(pattern)
    if head in (None, "mean", ""):
        return p.mean(axis=0)
    h = int(head)
    if not 0 <= h < p.shape[0]:
        raise ValueError(f"head {h} is out of range: the layer has {p.shape[0]} heads")
    return p[h]
