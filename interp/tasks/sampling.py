"""Seeded, vectorized random draws shared by the task generators.

Every draw goes through an explicit ``torch.Generator`` (never the global RNG), so a
batch is a pure function of ``(config, n, seed)``.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

# Rows resolved per step when sampling under per-row exclusions: bounds the
# [rows, range] weight matrix to a few tens of MB for 4096-token ranges.
_EXCLUDE_CHUNK = 2048
# Redraw rounds before falling back to masking (each halves the rejects at worst 50% exclusion).
_REJECTION_ROUNDS = 8


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (an int; numpy ints are accepted)."""
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an int, got {type(seed).__name__}") from None
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def randint(high: int, shape: tuple[int, ...], g: torch.Generator, low: int = 0) -> Tensor:
    """int64 tensor of ``shape`` with entries uniform in ``[low, high)``."""
    return torch.randint(low, high, shape, generator=g, dtype=torch.int64)


def sample_distinct(batch: int, n: int, high: int, g: torch.Generator) -> Tensor:
    """int64 ``[batch, n]``: per row, n distinct values from ``[0, high)`` in random order.

    Each row is uniform over ordered n-tuples without repetition. When collisions
    are rare (n² ≪ high) rows are drawn with replacement and redrawn whole if they
    repeat a value (cheap: O(batch·n)); otherwise a random top-n of ``high`` uniforms
    is taken (O(batch·high)). Both are exact.
    """
    if n > high:
        raise ValueError(f"cannot draw {n} distinct values from a range of {high}")
    if n * (n - 1) < high:
        out = randint(high, (batch, n), g)
        todo = _rows_with_repeats(out)
        while bool(todo.any()):
            rows = todo.nonzero().squeeze(1)
            out[rows] = randint(high, (rows.numel(), n), g)
            todo = torch.zeros_like(todo)
            todo[rows] = _rows_with_repeats(out[rows])
        return out
    # The order of the n largest of i.i.d. uniforms is itself a uniform permutation.
    return torch.rand(batch, high, generator=g).topk(n, dim=1).indices


def _rows_with_repeats(x: Tensor) -> Tensor:
    """bool ``[batch]``: True where a row of ``x`` [batch, n] holds a value twice."""
    s = x.sort(dim=1).values
    return (s[:, 1:] == s[:, :-1]).any(dim=1)


def sample_excluding(exclude: Tensor, low: int, high: int, g: torch.Generator) -> Tensor:
    """int64 ``[batch]``: per row a value uniform in ``[low, high)`` outside that row's ``exclude``.

    ``exclude`` is int64 ``[batch, m]``; entries outside ``[low, high)`` (e.g. -1 pads,
    tokens of other vocabularies) are ignored. Raises ValueError when some row has no
    value left to choose.
    """
    out = randint(high, (exclude.shape[0],), g, low=low)
    todo = (exclude == out[:, None]).any(dim=1)
    # Rejection is cheap when few values are excluded (the usual case: thousands of
    # keys, tens excluded); rows still unresolved fall through to exact masking.
    for _ in range(_REJECTION_ROUNDS):
        if not bool(todo.any()):
            return out
        rows = todo.nonzero().squeeze(1)
        out[rows] = randint(high, (rows.numel(),), g, low=low)
        todo[rows] = (exclude[rows] == out[rows, None]).any(dim=1)
    rows = todo.nonzero().squeeze(1)
    if rows.numel():
        out[rows] = _sample_excluding_masked(exclude[rows], low, high, g, rows)
    return out


def _sample_excluding_masked(exclude: Tensor, low: int, high: int, g: torch.Generator, rows: Tensor) -> Tensor:
    """Exact per-row draw through an allowed-token mask; ``rows`` name the examples in errors."""
    size = high - low
    out = torch.empty(exclude.shape[0], dtype=torch.int64)
    for start in range(0, exclude.shape[0], _EXCLUDE_CHUNK):
        ex = exclude[start : start + _EXCLUDE_CHUNK]
        inside = (ex >= low) & (ex < high)
        # Out-of-range entries are routed to a spare column that is dropped.
        idx = torch.where(inside, ex - low, torch.full_like(ex, size))
        hit = torch.zeros(ex.shape[0], size + 1, dtype=torch.bool)
        hit.scatter_(1, idx, True)
        allowed = ~hit[:, :size]
        empty = ~allowed.any(dim=1)
        if bool(empty.any()):
            row = int(rows[start + int(empty.nonzero()[0])])
            raise ValueError(
                f"example {row}: every token in [{low}, {high}) is excluded; nothing to substitute"
            )
        out[start : start + ex.shape[0]] = low + torch.multinomial(allowed.float(), 1, generator=g).squeeze(1)
    return out
