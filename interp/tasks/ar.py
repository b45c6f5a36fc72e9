"""Associative recall (AR) as in Arora et al. 2025, "Mechanistic evaluation of
Transformers and state space models".

Sequence (length ``2 * n_pairs + 5``; 37 for their 16 pairs)::

    <bos> k1 v1 k2 v2 ... kn vn <eos> kq vq <eos>
    0     1  2  3  4      2n-1 2n 2n+1 2n+2 2n+3 2n+4

Keys within an example are distinct, and so are values (each drawn without
replacement, as in the authors' tinylang generator), so the queried key has exactly
one pair and the answer is unambiguous. ``kq`` is one of the n keys, chosen
uniformly. Only the answer is supervised: ``loss_mask`` is True at the position of
``kq`` alone (the position whose next token is ``vq``).

Vocabulary (``vocab_size = 3 + n_keys + n_values``; 8195 for their 4096 + 4096)::

    0                        <pad>   (never sampled; reserved so ids match tinylang)
    1                        <bos>
    2                        <eos>
    [3, 3 + n_keys)          keys
    [3 + n_keys, vocab_size) values

Roles (int64 ``[batch, k]``):
    ``key``, ``value``      [b, n_pairs]: every pair in context, column i is pair i
    ``query``, ``answer``   [b, 1]: positions of kq (2n+2) and vq (2n+3)
    ``queried_key``, ``queried_value`` [b, 1]: the queried pair in context
    ``last``                [b, 1]: the query position (the only supervised one)
    ``bos`` [b, 1], ``eos`` [b, 2]: the special tokens (the first eos is the divider
    between context and query that Arora et al. probe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from ssmlens.interp.tasks import positions
from ssmlens.interp.tasks.sampling import randint, sample_distinct
from ssmlens.interp.tasks.task import Task, require

PAD, BOS, EOS = 0, 1, 2
_FIRST_KEY = 3


@dataclass(frozen=True)
class ARConfig:
    n_keys: int = 4096
    n_values: int = 4096
    n_pairs: int = 16

    def __post_init__(self) -> None:
        require(self.n_pairs >= 1, f"n_pairs must be at least 1, got {self.n_pairs}")
        require(self.n_keys >= self.n_pairs, f"n_keys ({self.n_keys}) must be >= n_pairs ({self.n_pairs})")
        require(self.n_values >= self.n_pairs, f"n_values ({self.n_values}) must be >= n_pairs ({self.n_pairs})")


class ARTask(Task):
    """Single-query associative recall; see the module docstring for layout and roles."""

    name = "ar"
    Config = ARConfig

    @property
    def vocab_size(self) -> int:
        return _FIRST_KEY + self.config.n_keys + self.config.n_values

    @property
    def seq_len(self) -> int:
        return 2 * self.config.n_pairs + 5

    def vocab_layout(self) -> dict[str, tuple[int, int]]:
        first_value = _FIRST_KEY + self.config.n_keys
        return {
            "pad": (PAD, PAD + 1),
            "bos": (BOS, BOS + 1),
            "eos": (EOS, EOS + 1),
            "key": (_FIRST_KEY, first_value),
            "value": (first_value, self.vocab_size),
        }

    def _generate(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        cfg = self.config
        p = cfg.n_pairs
        keys = _FIRST_KEY + sample_distinct(n, p, cfg.n_keys, g)  # [n, p]
        values = _FIRST_KEY + cfg.n_keys + sample_distinct(n, p, cfg.n_values, g)  # [n, p]
        which = randint(p, (n,), g)  # index of the queried pair
        kq = keys.gather(1, which[:, None])
        vq = values.gather(1, which[:, None])

        context = rearrange([keys, values], "two b p -> b (p two)")
        bos = torch.full((n, 1), BOS, dtype=torch.int64)
        eos = torch.full((n, 1), EOS, dtype=torch.int64)
        tokens = torch.cat([bos, context, eos, kq, vq, eos], dim=1)

        query = 2 * p + 2
        loss_mask = torch.zeros(n, self.seq_len, dtype=torch.bool)
        loss_mask[:, query] = True
        pair_pos = torch.arange(p, dtype=torch.int64)
        roles = {
            "key": positions.fixed(1 + 2 * pair_pos, n),
            "value": positions.fixed(2 + 2 * pair_pos, n),
            "query": positions.fixed([query], n),
            "answer": positions.fixed([query + 1], n),
            "queried_key": positions.column(1 + 2 * which),
            "queried_value": positions.column(2 + 2 * which),
            "last": positions.fixed([query], n),
            "bos": positions.fixed([0], n),
            "eos": positions.fixed([2 * p + 1, 2 * p + 4], n),
        }
        return tokens, loss_mask, roles
