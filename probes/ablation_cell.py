"""One cell of an ablation study, as an engine cell (``ssmlens.interp.engines``).

``ablation_cell(model=ModelSpec, task=TaskSpec, ablation=Ablation, ...)`` evaluates one
(model, task, ablation) and returns its rows; the study's coordinator writes them. It
runs the same in the coordinator (``engine="local"``) and in a Ray worker. A process
keeps the last model it loaded and the batches it sampled, so consecutive cells of one
model (the study's order, and what a Ray worker tends to get) load it once.
"""

from __future__ import annotations

import json
from typing import Any

# Per process: (key, model) of the last model loaded; task key -> batch. Ablations bind
# hooks for one forward and remove them, so a model is never changed by a cell.
_MODEL: list = [None, None]
_BATCHES: dict[str, Any] = {}
_MAX_BATCHES = 8


def _model_key(spec, vocab_size, device) -> str:
    if spec.instance is not None:
        return f"instance:{id(spec.instance)}:{device}"
    return json.dumps([spec.describe(), vocab_size, str(device)], sort_keys=True, default=str)


def load_model_cached(spec, vocab_size: int | None, device: str):
    key = _model_key(spec, vocab_size, device)
    if _MODEL[0] != key:
        _MODEL[0], _MODEL[1] = None, None  # free the previous model before loading the next
        _MODEL[1] = spec.load(vocab_size, device)
        _MODEL[0] = key
    return _MODEL[1]


def batch_cached(spec):
    key = json.dumps(spec.describe(), sort_keys=True, default=str)
    if key not in _BATCHES:
        while len(_BATCHES) >= _MAX_BATCHES:
            _BATCHES.pop(next(iter(_BATCHES)))
        _BATCHES[key] = spec.make_batch()
    return _BATCHES[key]


def forget() -> None:
    """Drop what this process keeps (the coordinator calls it when a study ends)."""
    _MODEL[0], _MODEL[1] = None, None
    _BATCHES.clear()


def ablation_cell(model, task, ablation, metrics, batch_size: int, device: str, vocab_size: int | None) -> dict:
    """Evaluate one cell. Returns ``{"rows": [{metric, value, n}, ...]}``, or
    ``{"skipped": reason}`` when the ablation does not apply to the model."""
    from ssmlens.probes.ablation import NotApplicable
    from ssmlens.probes.ablation_spec import StudyError
    from ssmlens.probes.ablation_study import evaluate_cell

    batch = batch_cached(task)
    m = load_model_cached(model, vocab_size, device)
    vocab = getattr(getattr(m, "cfg", None), "vocab_size", None)
    if vocab is not None and batch.vocab_size > vocab:
        raise StudyError(f"task {task.name!r} has vocab_size {batch.vocab_size} but model {model.name!r} has "
                         f"{vocab}: give the task the config the model was trained on")
    try:
        rows = evaluate_cell(m, batch, ablation, metrics, batch_size)
    except NotApplicable as e:
        return {"skipped": str(e)}
    return {"rows": rows}
