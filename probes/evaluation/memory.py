"""B'MOJO's eidetic memory in the evaluation: how much recall goes through it, and where
it holds the queried pair.

- ``recall_vs_memory_size``: answer accuracy of the trained model with its memory
  limited to m tokens (the same weights; ``memory_size`` is not a parameter), m = 0
  being B'MOJO-F (window + fading memory only). ``memory_share`` = (acc − acc at m = 0)
  / (acc − chance): the part of recall above chance that needs the memory.
- ``writes_by_role``: the fraction of examples whose token at each role is written to
  memory (``memory.hook_write``), per layer.
- ``write_ablation``: accuracy when the write at one role is forced to 0 (that token
  never enters the memory) in one layer, on the examples whose queried pair lies
  outside the query's window (where only the memory or the fading state can supply it).
- ``attention_split``: at the query, the attention mass on window columns, memory
  columns and the fading token, and on the queried value's column when it sits in
  memory (per layer, mean over heads and examples; ``ssmlens.probes.mixing``).
- ``write_patching``: a corruption that changes which tokens are written —
  ``repeat_key``: the queried key's occurrence in context becomes a copy of another
  pair's key (so that key repeats, and the query matches no pair) — and patching of
  the corrupted run's writes into the clean run at each role (``direction="noise"``:
  1 = no effect, 0 = as broken as the corrupted run), with ``write_change``, the
  fraction of examples whose write there differs between the two runs (where it is 0
  the patch is a no-op).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import xarray as xr

from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.interp.tasks.sampling import make_generator
from ssmlens.probes.ablation import HookAblation
from ssmlens.probes.evaluation.accuracy import answer_accuracy
from ssmlens.probes.evaluation.components import has_hook
from ssmlens.probes.patching import patching_sweep

WRITE_ROLES = ("bos", "key", "value", "queried_key", "queried_value", "query", "eos")


def has_memory(model) -> bool:
    """A B'MOJO-like model: writes to an eidetic memory that its attention reads."""
    return (has_hook(model, "memory.hook_write") and hasattr(model.cfg, "memory_size")
            and all(getattr(b, "attn", None) is not None for b in model.blocks))


def with_memory_size(model, size: int):
    """A copy of ``model`` (same weights) whose eidetic memory holds ``size`` tokens."""
    cfg = dataclasses.replace(model.cfg, memory_size=int(size))
    copy = type(model)(cfg)
    copy.load_state_dict(model.state_dict())
    return copy.to(next(model.parameters()).device).eval()


def _acc(model, batch: TaskBatch, batch_size: int, ablation="none") -> float:
    return answer_accuracy(model, batch, batch_size, ablation)["acc"]


def recall_vs_memory_size(model, batch: TaskBatch, sizes: list[int], batch_size: int) -> xr.DataArray:
    """Accuracy ``(memory_size,)`` at each size (and the trained one, marked in attrs)."""
    trained = int(model.cfg.memory_size)
    sizes = sorted({int(s) for s in sizes} | {trained})
    accs = [_acc(model if s == trained else with_memory_size(model, s), batch, batch_size) for s in sizes]
    return xr.DataArray(np.array(accs), dims=["memory_size"], coords={"memory_size": sizes},
                        attrs={"trained_memory_size": trained, "window": int(model.cfg.window), "metric": "acc"})


def memory_share(acc: float, acc_without: float, chance: float) -> float:
    """(acc − acc without memory) / (acc − chance), clipped to [0, 1]; NaN at or below chance."""
    if not np.isfinite(chance) or acc <= chance:
        return float("nan")
    return float(np.clip((acc - acc_without) / (acc - chance), 0.0, 1.0))


def _at_role(values: torch.Tensor, batch: TaskBatch, role: str) -> torch.Tensor:
    """``values [b, pos]`` at a role's positions ``[b, k]`` (NaN where padded)."""
    pos = batch.role(role)
    got = values.double().gather(1, pos.clamp(min=0))
    return torch.where(pos >= 0, got, torch.full_like(got, float("nan")))


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _writes(model, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """{layer: bool [b, pos] written} (on the CPU)."""
    names = [n for n in model.hook_dict if n.endswith("memory.hook_write")]
    _, cache = model.run_with_cache(tokens.to(_device(model)), names_filter=names)
    return {int(n.split(".")[1]): (cache[n] > 0.5).cpu() for n in names}


def writes_by_role(model, batch: TaskBatch) -> xr.DataArray:
    """Write rate ``(layer, role)``: mean over examples (and a role's columns) of the writes."""
    writes = _writes(model, batch.tokens)
    roles = [r for r in WRITE_ROLES if r in batch.roles]
    layers = sorted(writes)
    out = np.full((len(layers), len(roles)), np.nan)
    for i, l in enumerate(layers):
        for j, r in enumerate(roles):
            v = _at_role(writes[l], batch, r)
            out[i, j] = float(v[~torch.isnan(v)].mean()) if bool((~torch.isnan(v)).any()) else np.nan
    return xr.DataArray(out, dims=["layer", "role"], coords={"layer": layers, "role": roles},
                        attrs={"metric": "write_rate"})


def outside_window(batch: TaskBatch, window: int) -> torch.Tensor:
    """bool ``[b]``: the queried value is older than the query's window (query − value ≥ window)."""
    return (batch.role("query")[:, 0] - batch.role("queried_value")[:, 0]) >= int(window)


def write_ablation(model, batch: TaskBatch, roles: list[str], batch_size: int) -> xr.DataArray | None:
    """Accuracy ``(layer, role)`` with that role's write zeroed in that layer, on the examples
    whose queried value is outside the window (None if there are none)."""
    far = outside_window(batch, model.cfg.window)
    if not bool(far.any()):
        return None
    sub = batch.select(torch.nonzero(far).squeeze(1))
    layers = sorted(int(n.split(".")[1]) for n in model.hook_dict if n.endswith("memory.hook_write"))
    roles = [r for r in roles if r in sub.roles]
    out = np.full((len(layers), len(roles)), np.nan)
    for i, l in enumerate(layers):
        for j, r in enumerate(roles):
            out[i, j] = _acc(model, sub, batch_size, HookAblation("zero", f"blocks.{l}.memory.hook_write", [r]))
    return xr.DataArray(out, dims=["layer", "role"], coords={"layer": layers, "role": roles},
                        attrs={"metric": "acc", "n_examples": int(far.sum()), "baseline_acc": _acc(model, sub,
                                                                                                   batch_size)})


@torch.no_grad()
def attention_split(model, batch: TaskBatch) -> xr.DataArray:
    """Attention mass at the query ``(layer, part)``: window, memory, fading, and the
    queried value's column when it is in memory (``value_in_memory``, over the examples
    where it is outside the window)."""
    from ssmlens.models.bmojo_memory import window_mask
    from ssmlens.probes.mixing import token_mixing

    parts = ["window", "memory", "fading", "value_in_memory"]
    layers = list(range(len(model.blocks)))
    out = np.full((len(layers), len(parts)), np.nan)
    query = batch.role("query")[:, 0]
    value = batch.role("queried_value")[:, 0]
    rows = torch.arange(len(batch))
    far = outside_window(batch, model.cfg.window)
    for i, l in enumerate(layers):
        res = token_mixing(model, batch.tokens.to(_device(model)), l, slot="attn")
        p = res.matrix.mean(1).cpu()[rows, query]  # [b, L + 1], mean over heads
        L = res.n_tokens
        wmask = window_mask(L, model.cfg.window)[query]  # [b, L]
        tok = p[:, :L]
        out[i, 0] = float((tok * wmask).sum(-1).mean())
        out[i, 1] = float((tok * ~wmask).sum(-1).mean())
        out[i, 2] = float(p[:, L].mean())
        if bool(far.any()):
            out[i, 3] = float(tok[rows, value][far].mean())
    return xr.DataArray(out, dims=["layer", "part"], coords={"layer": layers, "part": parts},
                        attrs={"metric": "attention_mass", "where": "query"})


def repeat_key(batch: TaskBatch, seed: int) -> TaskBatch:
    """The queried key's occurrence in context replaced by another pair's key (module docstring)."""
    keys_pos = batch.role("key")
    qk = batch.role("queried_key")[:, 0]
    n = keys_pos.shape[1]
    if n < 2:
        raise ValueError("repeat_key needs at least two pairs per example")
    g = make_generator(seed)
    own = (keys_pos == qk[:, None]).float().argmax(1)  # column of the queried pair
    other = (own + torch.randint(1, n, (len(batch),), generator=g)) % n  # any other pair
    tokens = batch.tokens.clone()
    rows = torch.arange(len(batch))
    tokens[rows, qk] = batch.tokens[rows, keys_pos[rows, other]]
    config = {**batch.config, "corruption": {"mode": "repeat_key", "seed": int(seed), "query_index": 0}}
    return TaskBatch(tokens, batch.loss_mask.clone(), {k: v.clone() for k, v in batch.roles.items()},
                     batch.vocab_size, batch.task, config)


def write_patching(model, clean: TaskBatch, roles: list[str], seed: int,
                   progress: bool = False) -> tuple[xr.DataArray, xr.DataArray]:
    """(patching ``(metric, layer, role)`` of the repeat-key run's writes into the clean run,
    write change ``(layer, role)``)."""
    corrupted = repeat_key(clean, seed)
    roles = [r for r in roles if r in clean.roles]
    device = _device(model)
    sweep = patching_sweep(model, clean.to(device), corrupted.to(device), "memory.hook_write", roles,
                           direction="noise", progress=progress).sel(hook="memory.hook_write", drop=True)
    a, b = _writes(model, clean.tokens), _writes(model, corrupted.tokens)
    layers = sorted(a)
    change = np.full((len(layers), len(roles)), np.nan)
    for i, l in enumerate(layers):
        diff = (a[l] != b[l]).double()
        for j, r in enumerate(roles):
            v = _at_role(diff, clean, r)
            change[i, j] = float(v[~torch.isnan(v)].mean())
    return sweep, xr.DataArray(change, dims=["layer", "role"], coords={"layer": layers, "role": roles},
                               attrs={"metric": "write_change", "corruption": "repeat_key"})
