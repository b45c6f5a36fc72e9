"""Induction heads as in the Mamba paper (Gu & Dao 2023, §4.1).

A special trigger token followed by a target token appears once somewhere in a
sequence of random tokens; the sequence ends with the trigger again, and the model
must output the target ("Harry Potter ... Harry -> Potter"). The paper trains at
sequence length 256 with a vocabulary of 16.

Layout (length L = ``seq_len``; the answer sits in the input so ``answer = query + 1``)::

    x0 x1 ... x_{t-1} <trig> y x_{t+2} ... x_{L-3} <trig> y
                      t      t+1                  L-2    L-1

The first trigger's position t is uniform over ``[0, L - 4]`` (so the target y at
t + 1 comes before the final trigger). Fillers x and the target y are uniform over
the content tokens; the trigger appears exactly twice. Only the final trigger is
supervised (``loss_mask`` True at L - 2 alone).

Vocabulary (``vocab_size`` = V, default 16)::

    [0, V - 1)     content tokens (fillers and targets)
    V - 1          the trigger

The association is trigger -> target, so the key vocabulary is the trigger alone and
the value vocabulary is the content tokens (disjoint). With a single key token, key
corruption has no substitute key and raises; value corruption works.

Roles (int64 ``[batch, k]``): ``key``, ``queried_key`` [b, 1] (t), ``value``,
``queried_value`` [b, 1] (t + 1), ``query``, ``last`` [b, 1] (L - 2), ``answer`` [b, 1]
(L - 1), ``trigger`` [b, 2] (t and L - 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssmlens.interp.tasks import positions
from ssmlens.interp.tasks.sampling import randint
from ssmlens.interp.tasks.task import Task, require


@dataclass(frozen=True)
class InductionConfig:
    vocab_size: int = 16
    seq_len: int = 256

    def __post_init__(self) -> None:
        require(self.vocab_size >= 2, f"vocab_size must be at least 2 (content + trigger), got {self.vocab_size}")
        require(self.seq_len >= 4, f"seq_len must be at least 4, got {self.seq_len}")


class InductionTask(Task):
    """Mamba-paper induction heads; see the module docstring for layout and roles."""

    name = "induction"
    Config = InductionConfig

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def trigger(self) -> int:
        """The trigger token id (the last id)."""
        return self.config.vocab_size - 1

    def vocab_layout(self) -> dict[str, tuple[int, int]]:
        v = self.config.vocab_size
        # Content tokens are the values of the trigger -> target association.
        return {"value": (0, v - 1), "key": (v - 1, v)}

    def _generate(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        length, n_content = self.config.seq_len, self.config.vocab_size - 1
        tokens = randint(n_content, (n, length), g)
        t = randint(length - 3, (n,), g)  # first trigger in [0, L - 4]
        target = randint(n_content, (n, 1), g)
        rows = torch.arange(n)
        tokens[rows, t] = self.trigger
        tokens[:, length - 2] = self.trigger
        tokens[rows, t + 1] = target[:, 0]
        tokens[:, length - 1] = target[:, 0]

        loss_mask = torch.zeros(n, length, dtype=torch.bool)
        loss_mask[:, length - 2] = True
        first = positions.column(t)
        roles = {
            "key": first,
            "value": first + 1,
            "query": positions.fixed([length - 2], n),
            "answer": positions.fixed([length - 1], n),
            "queried_key": first.clone(),
            "queried_value": first + 1,
            "last": positions.fixed([length - 2], n),
            "trigger": torch.cat([first, positions.fixed([length - 2], n)], dim=1),
        }
        return tokens, loss_mask, roles
