"""The batch every task returns: tokens, supervision, and positions by role.

Conventions (DESIGN §5), shared by the trainer, the probes and the run store:

- ``tokens`` int64 ``[batch, pos]``.
- ``loss_mask`` bool ``[batch, pos]``: True at position t when the prediction made
  there (of ``tokens[:, t + 1]``) is supervised. The last column is always False.
- ``roles``: role name -> int64 ``[batch, k]`` positions, ``-1`` where an example has
  fewer than k. Standard roles (a task fills those that make sense for it):
  ``key``, ``value`` (every pair in context), ``query`` (where the model must
  predict the answer: the position of the queried key), ``answer`` (the position of
  the answer token, ``query + 1``), ``queried_key`` / ``queried_value`` (first
  occurrence in context of the queried pair), ``last`` (last supervised position).
  A task may add its own roles (e.g. ``noise``); the docstring of the task says so.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

STANDARD_ROLES = ("key", "value", "query", "answer", "queried_key", "queried_value", "last")


class UnknownRoleError(KeyError):
    """A role name the task does not have; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass
class TaskBatch:
    tokens: Tensor  # int64 [batch, pos]
    loss_mask: Tensor  # bool [batch, pos]
    roles: dict[str, Tensor]  # role -> int64 [batch, k], -1 padded
    vocab_size: int
    task: str
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, pos], got shape {tuple(self.tokens.shape)}")
        if self.loss_mask.shape != self.tokens.shape:
            raise ValueError(
                f"loss_mask shape {tuple(self.loss_mask.shape)} != tokens shape {tuple(self.tokens.shape)}"
            )
        for role, pos in self.roles.items():
            if pos.ndim != 2 or pos.shape[0] != self.tokens.shape[0]:
                raise ValueError(f"role {role!r} must be [batch, k], got {tuple(pos.shape)}")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    @property
    def targets(self) -> Tensor:
        """int64 [batch, pos]: the token each position predicts (next token; -100 at the end)."""
        pad = torch.full_like(self.tokens[:, :1], -100)
        return torch.cat([self.tokens[:, 1:], pad], dim=1)

    def role(self, name: str) -> Tensor:
        """Positions of a role, int64 [batch, k]; a clear error for unknown roles."""
        if name not in self.roles:
            close = difflib.get_close_matches(str(name), list(self.roles), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UnknownRoleError(f"task {self.task!r} has no role {name!r}.{hint} Roles: {', '.join(sorted(self.roles))}")
        return self.roles[name]

    def tokens_at(self, name: str) -> Tensor:
        """int64 [batch, k]: the token at each position of role ``name`` (-1 where padded)."""
        pos = self.role(name)
        return torch.where(pos >= 0, self.tokens.gather(1, pos.clamp(min=0)), torch.full_like(pos, -1))

    def answer_tokens(self) -> Tensor:
        """int64 [batch, n_queries]: the token expected at each answer position (-1 pad)."""
        ans = self.role("answer")
        safe = ans.clamp(min=0)
        return torch.where(ans >= 0, self.tokens.gather(1, safe), torch.full_like(ans, -1))

    def to(self, device: torch.device | str) -> "TaskBatch":
        return TaskBatch(
            self.tokens.to(device),
            self.loss_mask.to(device),
            {k: v.to(device) for k, v in self.roles.items()},
            self.vocab_size,
            self.task,
            dict(self.config),
        )

    def select(self, index: Tensor | slice | list[int]) -> "TaskBatch":
        """The sub-batch of the given examples."""
        return TaskBatch(
            self.tokens[index],
            self.loss_mask[index],
            {k: v[index] for k, v in self.roles.items()},
            self.vocab_size,
            self.task,
            dict(self.config),
        )
