"""Answer accuracy: at every supervised position the argmax prediction must be the next token.

``loss_mask[:, t]`` (DESIGN §5, ``ssmlens.interp.tasks.base``) marks the positions whose
prediction of ``tokens[:, t + 1]`` is scored, so the same code measures AR (one
answer per example), MQAR (many) and the other tasks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ssmlens.interp.tasks.base import TaskBatch


def _targets_and_mask(tokens: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Next-token targets [b, pos] (last column a dummy) and the mask without the last column."""
    mask = loss_mask.clone()
    mask[:, -1] = False  # the last position has no next token
    return torch.cat([tokens[:, 1:], tokens[:, -1:]], dim=1), mask


def answer_hits(
    logits: Float[Tensor, "batch pos vocab"],
    tokens: Int[Tensor, "batch pos"],
    loss_mask: Bool[Tensor, "batch pos"],
) -> Bool[Tensor, "batch pos"]:
    """True where ``loss_mask`` is set and argmax(logits[:, t]) == tokens[:, t+1]."""
    target, mask = _targets_and_mask(tokens, loss_mask)
    return (logits.argmax(-1) == target) & mask


def answer_losses(
    logits: Float[Tensor, "batch pos vocab"],
    tokens: Int[Tensor, "batch pos"],
    loss_mask: Bool[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos"]:
    """Cross-entropy of the next token at supervised positions, 0 elsewhere."""
    target, mask = _targets_and_mask(tokens, loss_mask)
    ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none").view_as(target)
    return ce * mask


@torch.no_grad()
def evaluate(model, batch: TaskBatch, batch_size: int = 500, device: str | torch.device | None = None) -> dict:
    """Held-out metrics of ``model`` on ``batch``.

    Returns ``loss`` (mean CE over supervised positions), ``acc`` (fraction of
    supervised positions predicted exactly), ``seq_acc`` (fraction of examples with
    every supervised position right), ``n_answers`` and ``n_examples``.
    """
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = ces = n_ans = seq_ok = 0.0
    try:
        for start in range(0, len(batch), batch_size):
            tokens = batch.tokens[start : start + batch_size].to(device)
            mask = batch.loss_mask[start : start + batch_size].to(device)
            logits = model(tokens)
            hit = answer_hits(logits, tokens, mask)
            ce = answer_losses(logits, tokens, mask)
            supervised = mask[:, :-1].sum(1)
            hits += float(hit.sum())
            ces += float(ce.sum())
            n_ans += float(supervised.sum())
            seq_ok += float(((hit.sum(1) == supervised) & (supervised > 0)).sum())
    finally:
        model.train(was_training)
    if n_ans == 0:
        raise ValueError(f"task {batch.task!r}: the evaluation batch has no supervised positions")
    return {
        "loss": ces / n_ans,
        "acc": hits / n_ans,
        "seq_acc": seq_ok / len(batch),
        "n_answers": int(n_ans),
        "n_examples": len(batch),
    }


def evaluate_tasks(model, batches: Mapping[str, TaskBatch], batch_size: int = 500) -> dict[str, dict]:
    """``evaluate`` on several tasks (or settings of one task): name -> metrics."""
    return {name: evaluate(model, b, batch_size) for name, b in batches.items()}
