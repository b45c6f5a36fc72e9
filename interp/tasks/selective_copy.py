"""Selective copying as in the Mamba paper (Gu & Dao 2023, §4.1).

``n_data`` data tokens are scattered at random positions among noise tokens; after a
marker the model must output the data tokens in their order of appearance,
skipping the noise. The paper uses a context of 4096 tokens, 16 data tokens and a
vocabulary of 16 (noise and marker included), and the token ids follow the S4/Mamba
generator (noise 0, marker last).

Layout (C = ``n_context``, M = ``n_data``, length C + 1 + M)::

    context: noise with d1..dM at sorted random positions | <marker> d1 d2 ... dM
    0 .. C-1                                              | C        C+1     C+M

The outputs are written after the marker with teacher forcing, so every answer sits
in the input and ``answer = query + 1``: the marker predicts d1, d1 (at C + 1)
predicts d2, and so on. ``loss_mask`` is True exactly at the M query positions
C .. C + M - 1. Data tokens are uniform over the data vocabulary and may repeat;
their positions are distinct.

Vocabulary (``vocab_size`` = V, default 16)::

    0              noise
    [1, V - 1)     data tokens
    V - 1          marker

Roles (int64 ``[batch, k]``): ``data`` [b, M] (positions of the data tokens in the
context, ascending), ``query`` [b, M] (C + i), ``answer`` [b, M] (C + 1 + i; its
token equals the token at ``data[:, i]``), ``marker`` [b, 1], ``last`` [b, 1]
(C + M - 1). There is no key/value pairing, so no ``queried_key``/``queried_value``
and no corruption.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssmlens.interp.tasks import positions
from ssmlens.interp.tasks.sampling import randint, sample_distinct
from ssmlens.interp.tasks.task import Task, require

NOISE = 0


@dataclass(frozen=True)
class SelectiveCopyConfig:
    vocab_size: int = 16
    n_context: int = 4096
    n_data: int = 16

    def __post_init__(self) -> None:
        require(self.vocab_size >= 3, f"vocab_size must be at least 3 (noise, data, marker), got {self.vocab_size}")
        require(self.n_data >= 1, f"n_data must be at least 1, got {self.n_data}")
        require(
            self.n_context >= self.n_data,
            f"n_context ({self.n_context}) must be >= n_data ({self.n_data})",
        )


class SelectiveCopyTask(Task):
    """Mamba-paper selective copying; see the module docstring for layout and roles."""

    name = "selective_copy"
    Config = SelectiveCopyConfig

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def seq_len(self) -> int:
        return self.config.n_context + 1 + self.config.n_data

    @property
    def marker(self) -> int:
        """The marker token id (the last id)."""
        return self.config.vocab_size - 1

    def vocab_layout(self) -> dict[str, tuple[int, int]]:
        v = self.config.vocab_size
        return {"noise": (NOISE, NOISE + 1), "data": (1, v - 1), "marker": (v - 1, v)}

    def _generate(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        c, m, v = self.config.n_context, self.config.n_data, self.config.vocab_size
        data_pos = sample_distinct(n, m, c, g).sort(dim=1).values  # [n, m]
        data = randint(v - 1, (n, m), g, low=1)  # [n, m], in order of appearance

        context = torch.full((n, c), NOISE, dtype=torch.int64)
        context.scatter_(1, data_pos, data)
        marker = torch.full((n, 1), self.marker, dtype=torch.int64)
        tokens = torch.cat([context, marker, data], dim=1)

        query = positions.fixed(c + torch.arange(m), n)
        loss_mask = positions.mask_at(query, self.seq_len)
        roles = {
            "data": data_pos,
            "query": query,
            "answer": query + 1,
            "marker": positions.fixed([c], n),
            "last": positions.fixed([c + m - 1], n),
        }
        return tokens, loss_mask, roles
