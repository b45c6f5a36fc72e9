"""Building role tensors and loss masks: positions as int64 ``[batch, k]``, -1 padded."""

from __future__ import annotations

import torch
from torch import Tensor


def fixed(positions: list[int] | Tensor, batch: int) -> Tensor:
    """int64 ``[batch, k]``: the same positions for every example (tasks with a fixed layout)."""
    pos = torch.as_tensor(positions, dtype=torch.int64).reshape(1, -1)
    return pos.expand(batch, -1).clone()


def column(pos: Tensor) -> Tensor:
    """int64 ``[batch, 1]`` from one position per example ``[batch]``."""
    return pos.to(torch.int64).reshape(-1, 1)


def from_mask(mask: Tensor, width: int | None = None) -> Tensor:
    """Positions where ``mask`` [batch, pos] is True, ascending, as int64 ``[batch, width]``.

    Rows with fewer hits are padded with -1; ``width`` defaults to the largest count
    (fix it when batches must share a shape).
    """
    b, length = mask.shape
    idx = torch.arange(length, dtype=torch.int64).expand(b, length)
    # Unmasked positions are pushed past the end so one sort puts hits first, in order.
    order = torch.where(mask, idx, idx + length).sort(dim=1).values
    k = int(mask.sum(dim=1).max()) if width is None else width
    if k > length:
        order = torch.cat([order, torch.full((b, k - length), 2 * length, dtype=torch.int64)], dim=1)
    order = order[:, :k]
    return torch.where(order < length, order, torch.full_like(order, -1))


def from_lists(rows: list[list[int]], width: int) -> Tensor:
    """int64 ``[len(rows), width]`` from ragged per-example position lists, -1 padded."""
    out = torch.full((len(rows), width), -1, dtype=torch.int64)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"example {i} has {len(row)} positions, more than width {width}")
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.int64)
    return out


def mask_at(positions: Tensor, length: int) -> Tensor:
    """bool ``[batch, length]``: True at every non-negative entry of ``positions`` [batch, k]."""
    b = positions.shape[0]
    mask = torch.zeros(b, length + 1, dtype=torch.bool)
    # -1 pads land in a spare last column that is dropped.
    mask.scatter_(1, torch.where(positions >= 0, positions, torch.full_like(positions, length)), True)
    return mask[:, :length]
