"""Answer accuracy of a model, optionally under an ablation, reading logits only at the
supervised positions (``return_type="answers"``): with an 8195-token vocabulary the
unembedding of every position would cost 37× more than the answers need."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.probes.ablation import parse_ablation


@torch.no_grad()
def answer_accuracy(model, batch: TaskBatch, batch_size: int = 250, ablation="none") -> dict[str, float]:
    """``{"acc", "loss", "n"}`` over the batch's supervised positions (``loss_mask``), with
    ``ablation`` (``ssmlens.probes.ablation`` spec or object) attached only meanwhile."""
    bound = parse_ablation(ablation).bind(model, batch)
    device = next(model.parameters()).device
    hits = loss = 0.0
    n = 0
    for start in range(0, len(batch), batch_size):
        rows = slice(start, start + batch_size)
        with model.hooks(fwd_hooks=bound.fwd_hooks(rows)) as m:
            logits, target = m(batch.tokens[rows].to(device), return_type="answers",
                               loss_mask=batch.loss_mask[rows].to(device))
        hits += float((logits.argmax(-1) == target).sum())
        loss += float(F.cross_entropy(logits.float(), target, reduction="sum"))
        n += int(target.numel())
    if n == 0:
        raise ValueError(f"task {batch.task!r}: the batch has no supervised positions")
    return {"acc": hits / n, "loss": loss / n, "n": n}
