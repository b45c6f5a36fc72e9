"""Counterfactual batches for activation patching (Arora et al. 2025).

``corrupt(batch, "key", seed)`` replaces the queried key's occurrence in context with
a key that appears nowhere in that example, so the query no longer matches any pair;
``corrupt(batch, "value", seed)`` replaces the queried pair's value in context with
another value that is not the value of any pair in that example, so the correct
answer changes. Exactly one token per example changes; positions, roles, loss mask
and the clean answer token at ``answer`` are kept, so clean and corrupted runs align
position by position and the clean answer stays readable from the corrupted batch.
The substitute token sits at ``queried_key`` / ``queried_value`` of the returned
batch (``batch.tokens_at(...)``).
"""

from __future__ import annotations

from typing import Literal

from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.interp.tasks.registry import task_from_batch
from ssmlens.interp.tasks.sampling import make_generator, sample_excluding

_ROLE = {"key": "queried_key", "value": "queried_value"}


def corrupt(batch: TaskBatch, mode: Literal["key", "value"], seed: int, query_index: int = 0) -> TaskBatch:
    """The same batch with the queried pair's key or value swapped (see module docstring).

    batch: a TaskBatch with ``queried_key`` and ``queried_value`` roles [b, n_queries].
    mode: "key" or "value". seed: seeds the choice of substitutes.
    query_index: which query's pair to corrupt when a task asks several (MQAR).
    Returns a new TaskBatch; ``config["corruption"]`` records mode, seed and query_index.
    """
    if mode not in _ROLE:
        raise ValueError(f"unknown corruption mode {mode!r}; valid modes: {', '.join(_ROLE)}")
    missing = [r for r in _ROLE.values() if r not in batch.roles]
    if missing:
        raise ValueError(
            f"task {batch.task!r} has no {' or '.join(repr(m) for m in missing)} role, so it cannot be "
            f"corrupted; roles: {sorted(batch.roles)}"
        )
    where = batch.roles[_ROLE[mode]]
    if not 0 <= query_index < where.shape[1]:
        raise ValueError(f"query_index {query_index} out of range: task {batch.task!r} has {where.shape[1]} queries")
    pos = where[:, query_index]
    if bool((pos < 0).any()):
        raise ValueError(f"some examples have no query {query_index}")

    task = task_from_batch(batch)
    vocab = task.key_range if mode == "key" else task.value_range
    if mode == "key":
        # Absent from the whole example: the query key must match nothing at all.
        exclude = batch.tokens
    else:
        # Not any pair's value: the corrupted answer must be unambiguous.
        exclude = batch.tokens_at("value")
    try:
        new = sample_excluding(exclude, vocab[0], vocab[1], make_generator(seed))
    except ValueError as err:
        raise ValueError(
            f"task {batch.task!r} has no {mode} token to substitute ({mode} tokens are "
            f"[{vocab[0]}, {vocab[1]})): {err}"
        ) from None

    tokens = batch.tokens.clone()
    tokens.scatter_(1, pos[:, None], new[:, None])
    config = {**batch.config, "corruption": {"mode": mode, "seed": int(seed), "query_index": query_index}}
    roles = {k: v.clone() for k, v in batch.roles.items()}
    return TaskBatch(tokens, batch.loss_mask.clone(), roles, batch.vocab_size, batch.task, config)
