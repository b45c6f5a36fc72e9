"""Multi-query associative recall (MQAR) as in Zoology (Arora, Eyuboglu et al. 2023).

Layout, following Zoology's ``multiquery_ar`` generator (sequence length L, P pairs)::

    k1 v1 k2 v2 ... kP vP | query region of L - 2P tokens
    0  1  2  3      2P-2 2P-1

The query region is split into ``space = (L - 2P) // 2`` two-token slots. P distinct
slots are drawn without replacement with probabilities p_i ∝ a·i^(a-1) for slot
i = 1..space (a = ``power_a``, 0.01 in Zoology: a near-1/i power law, so queries cluster
close to the pairs), pair j's key goes to slot ``gap_j`` (region offset
``2·gap_j``) and its value right after it. Every key is queried exactly once, in
random order. All other positions are noise.

One deliberate difference from Zoology: Zoology leaves the slot after each query
key as noise and keeps the value only in the labels; here the value is written into
the input there, so that ``answer = query + 1`` holds the answer token (DESIGN §5)
and next-token targets are the labels. Supervision is unchanged: ``loss_mask`` is
True exactly at the P query positions.

Vocabulary (``vocab_size = V``; Zoology uses V = 8192)::

    0                 noise / padding token (never a key or value)
    [1, V // 2)       keys
    [V // 2, V)       values

Noise: with ``random_non_queries=True`` (Zoology's default) every noise position
holds a token uniform over the whole vocabulary ``[0, V)``, as Zoology does, so noise
can coincide with key or value tokens (never at a supervised position); with
``False`` noise positions hold token 0.

Keys within an example are distinct, and so are values (both drawn without
replacement, as in Zoology).

Roles (int64 ``[batch, k]``):
    ``key``, ``value``   [b, P]: the pairs in context, column j is pair j
    ``query``            [b, P]: positions of the query keys, ascending
    ``answer``           [b, P]: ``query + 1``
    ``queried_key``, ``queried_value`` [b, P]: column j is the context pair that
                         query column j asks about
    ``last``             [b, 1]: the last query position
    ``noise``            [b, L - 4P]: every noise position, ascending
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from ssmlens.interp.tasks import positions
from ssmlens.interp.tasks.sampling import randint, sample_distinct
from ssmlens.interp.tasks.task import Task, require

NOISE = 0


def power_law_probs(space: int, power_a: float) -> Tensor:
    """float64 ``[space]``: Zoology's slot distribution p_i ∝ a·i^(a-1), i = 1..space."""
    i = torch.arange(1, space + 1, dtype=torch.float64)
    p = power_a * i ** (power_a - 1)
    return p / p.sum()


@dataclass(frozen=True)
class MQARConfig:
    vocab_size: int = 8192
    seq_len: int = 64
    n_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self) -> None:
        require(self.n_pairs >= 1, f"n_pairs must be at least 1, got {self.n_pairs}")
        require(
            4 * self.n_pairs <= self.seq_len,
            f"seq_len ({self.seq_len}) must be >= 4 * n_pairs ({4 * self.n_pairs}): pairs plus a slot per query",
        )
        require(
            self.vocab_size // 2 - 1 >= self.n_pairs,
            f"vocab_size ({self.vocab_size}) leaves {self.vocab_size // 2 - 1} keys, fewer than n_pairs ({self.n_pairs})",
        )
        require(self.power_a > 0, f"power_a must be positive, got {self.power_a}")


class MQARTask(Task):
    """Zoology MQAR; see the module docstring for layout, vocabulary and roles."""

    name = "mqar"
    Config = MQARConfig

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    def vocab_layout(self) -> dict[str, tuple[int, int]]:
        half = self.config.vocab_size // 2
        return {"noise": (NOISE, NOISE + 1), "key": (1, half), "value": (half, self.config.vocab_size)}

    @property
    def n_slots(self) -> int:
        """Two-token query slots after the pairs: ``(seq_len - 2 * n_pairs) // 2``."""
        return (self.config.seq_len - 2 * self.config.n_pairs) // 2

    def _generate(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        cfg = self.config
        p, length, half = cfg.n_pairs, cfg.seq_len, cfg.vocab_size // 2
        context = 2 * p
        keys = 1 + sample_distinct(n, p, half - 1, g)  # [n, p] in [1, V/2)
        values = half + sample_distinct(n, p, cfg.vocab_size - half, g)  # [n, p] in [V/2, V)

        # Slot j of the query region is drawn for pair j (Zoology's pairing of keys to gaps).
        probs = power_law_probs(self.n_slots, cfg.power_a).to(torch.float32)
        slots = torch.multinomial(probs.expand(n, -1), p, replacement=False, generator=g)  # [n, p]
        slots, pair = slots.sort(dim=1)  # queries in order of position; pair[:, j] = pair asked
        query = context + 2 * slots

        if cfg.random_non_queries:
            tokens = randint(cfg.vocab_size, (n, length), g)
        else:
            tokens = torch.full((n, length), NOISE, dtype=torch.int64)
        tokens[:, :context] = rearrange([keys, values], "two b p -> b (p two)")
        tokens.scatter_(1, query, keys.gather(1, pair))
        tokens.scatter_(1, query + 1, values.gather(1, pair))

        loss_mask = positions.mask_at(query, length)
        used = loss_mask | positions.mask_at(query + 1, length)
        used[:, :context] = True
        pair_pos = torch.arange(p, dtype=torch.int64)
        roles = {
            "key": positions.fixed(2 * pair_pos, n),
            "value": positions.fixed(2 * pair_pos + 1, n),
            "query": query,
            "answer": query + 1,
            "queried_key": 2 * pair,
            "queried_value": 2 * pair + 1,
            "last": query[:, -1:].clone(),
            "noise": positions.from_mask(~used, width=length - 4 * p),
        }
        return tokens, loss_mask, roles
