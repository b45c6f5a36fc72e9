"""A whole patching study of one checkpoint, written to a run store.

``run_patching_study(checkpoint, "runs/patching-x")`` loads the model, samples the
task it was trained on and its corruption, runs the batched patching sweep over
every layer × position (and over the standard roles), attribution patching over the
same sites, caches the clean run's activations for a few examples, and writes it all
to one run (DESIGN §6). Entries of the run:

=====================================  ==========================================
``config`` / ``checkpoint`` attrs      what was run, on which checkpoint
``batch``                              the clean batch; ``results/corrupted/tokens``
``cache/<hook>``                       clean activations of ``cache_examples`` examples
``results/patching/<kind>``            ``(metric, layer, pos)`` — ``patching_sweep``
``results/patching_roles/<kind>``      ``(metric, layer, role)``
``results/attribution/<kind>``         ``(metric, layer, pos)`` — ``attribution_patching``
``tables/patching``                    the same as one tidy table (dashboards)
``metrics``                            ``accuracy`` (the clean run's), clean / corrupted
                                       accuracy and p(answer), timings
=====================================  ==========================================

``<kind>`` is the hook kind without ``hook_`` (``resid_pre``, ``mixer.ssm_state``,
``attn.out``, ``memory.write``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import xarray as xr

from ssmlens.interp.hook_names import hook_suffix
from ssmlens.models.checkpoint import weights_digest

ROLE_UNITS = ("queried_key", "queried_value", "query", "last")


def default_hooks(model) -> list[str]:
    """``resid_pre`` plus the memory of the architecture: SSM states (Mamba, B'MOJO, H3),
    attention outputs (Transformer, B'MOJO), eidetic writes (B'MOJO), Based's kv-state,
    Hyena's long-convolution outputs."""
    kinds = {hook_suffix(n) for n in model.hook_dict}
    hooks = ["resid_pre"]
    for kind in ("mixer.hook_ssm_state", "attn.hook_out", "memory.hook_write", "mixer.hook_kv_state"):
        if kind in kinds:
            hooks.append(kind)
    hooks += sorted(k for k in kinds if k.startswith("mixer.hook_conv_out_"))
    return hooks


def kind_key(kind: str) -> str:
    """``mixer.hook_ssm_state`` -> ``mixer.ssm_state``; ``hook_resid_pre`` -> ``resid_pre``."""
    return kind.replace("hook_", "")


def load_for_study(checkpoint_dir: str | Path, task: str | None = None,
                   task_kwargs: dict[str, Any] | None = None) -> tuple[Any, Path, str, dict[str, Any]]:
    """(model in eval mode, checkpoint path, task name, task config): a run directory
    resolves to its final/last checkpoint; the task defaults to the one in the
    checkpoint's ``train_config.json``, whose settings ``task_kwargs`` update."""
    from ssmlens.models import load_model

    path = Path(checkpoint_dir)
    train_cfg = None
    try:
        from ssmlens.interp.training.checkpointing import find_train_config, resolve_checkpoint

        path = resolve_checkpoint(path)
        train_cfg = find_train_config(path)
    except ImportError:  # pragma: no cover - the trainer is part of the distribution
        pass
    model = load_model(path).eval()
    if task is None:
        task = (train_cfg or {}).get("task", "ar")
    same = train_cfg is not None and train_cfg.get("task") == task
    settings = {**(dict(train_cfg.get("task_config") or {}) if same else {}), **(task_kwargs or {})}
    from ssmlens.interp.tasks import make_task

    vocab = make_task(task, **settings).vocab_size
    if vocab > model.cfg.vocab_size:
        raise ValueError(f"task {task!r} with {settings} uses {vocab} token ids but the model has vocab_size "
                         f"{model.cfg.vocab_size}; use the task settings it was trained with")
    return model, path, task, settings


def tidy(result: xr.DataArray) -> pd.DataFrame:
    """A patching/attribution array as one row per (hook, layer, unit), metrics as columns."""
    unit = "pos" if "pos" in result.dims else "role"
    df = result.to_dataframe(name="value").reset_index().pivot_table(
        index=[d for d in result.dims if d != "metric"], columns="metric", values="value", dropna=False)
    df = df.reset_index()
    df.columns.name = None
    if unit == "pos" and "pos_labels" in result.attrs:
        labels = dict(zip(result["pos"].values.tolist(), result.attrs["pos_labels"]))
        df["pos_label"] = df["pos"].map(labels)
    return df.dropna(subset=[c for c in df.columns if c in result["metric"].values.tolist()], how="all")


def run_patching_study(
    checkpoint_dir: str | Path,
    out_url: str | Path,
    task_kwargs: dict[str, Any] | None = None,
    n_examples: int = 64,
    hooks: Sequence[str] | None = None,
    *,
    task: str | None = None,
    corruption: str = "value",
    seed: int = 0,
    direction: str = "denoise",
    roles: Sequence[str] = ROLE_UNITS,
    attribution: bool = True,
    cache_examples: int = 8,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Run the study described in the module docstring; returns the run's path/URL.

    checkpoint_dir: a checkpoint or a training run directory. task_kwargs: task
    config (default: the checkpoint's training task). hooks: short or full names
    (default: ``default_hooks``). corruption: ``ssmlens.interp.tasks.corrupt`` mode.
    """
    from ssmlens.interp.store import create_run
    from ssmlens.interp.tasks import corrupt, make_task
    from ssmlens.probes.attribution import attribution_patching
    from ssmlens.probes.patching import patching_sweep

    model, ckpt, task, task_kwargs = load_for_study(checkpoint_dir, task, task_kwargs)
    hooks = list(hooks) if hooks is not None else default_hooks(model)
    clean = make_task(task, **task_kwargs).sample(n_examples, seed)
    corr = corrupt(clean, corruption, seed + 1)
    roles = [r for r in roles if r in clean.roles]
    config = {
        "kind": "patching_study", "checkpoint": str(ckpt), "checkpoint_sha256": weights_digest(ckpt),
        "model_type": model.model_type,
        "model_config": model.config_dict(), "task": task, "task_config": task_kwargs,
        "n_examples": n_examples, "corruption": corruption, "seed": seed, "hooks": hooks,
        "direction": direction, "roles": roles,
    }
    timings: dict[str, float] = {}
    results: dict[str, xr.DataArray] = {}

    t0 = time.perf_counter()
    sweep = patching_sweep(model, clean, corr, hooks, "all", direction=direction, progress=progress)
    timings["patching_s"] = time.perf_counter() - t0
    for kind in sweep["hook"].values.tolist():
        results[f"patching/{kind_key(kind)}"] = _one_kind(sweep, kind)
    if roles:
        by_role = patching_sweep(model, clean, corr, hooks, roles, direction=direction, progress=progress)
        for kind in by_role["hook"].values.tolist():
            results[f"patching_roles/{kind_key(kind)}"] = _one_kind(by_role, kind)
    if attribution:
        t0 = time.perf_counter()
        attr = attribution_patching(model, clean, corr, hooks, "all", direction=direction)
        timings["attribution_s"] = time.perf_counter() - t0
        for kind in attr["hook"].values.tolist():
            results[f"attribution/{kind_key(kind)}"] = _one_kind(attr, kind)

    with torch.no_grad():
        _, cache = model.run_with_cache(clean.tokens[:cache_examples])
    with create_run(out_url, config, overwrite=overwrite) as w:
        w.set_checkpoint(str(ckpt))
        w.write_batch(clean)
        w.write_result("corrupted/tokens", corr.tokens, ("batch", "pos"))
        w.write_cache({k: v for k, v in cache.items()})
        for name, da in results.items():
            w.write_result(name, da)
        w.write_table("patching", tidy(sweep))
        if attribution:
            w.write_table("attribution", tidy(attr))
        w.set_metrics({
            **{k: v for k, v in sweep.attrs.items() if k.startswith(("clean_", "corrupted_"))},
            "accuracy": sweep.attrs["clean_accuracy"],  # the model's answer accuracy (the runs list shows it)
            **timings,
        })
        url = str(getattr(w, "url", out_url))
    return url


def _one_kind(result: xr.DataArray, kind: str) -> xr.DataArray:
    """One hook kind of a sweep, without the ``hook`` axis and the layers it lacks."""
    part = result.sel(hook=kind, drop=True)
    keep = [l for l in part["layer"].values.tolist()
            if not bool(part.sel(layer=l).isnull().all())]
    part = part.sel(layer=keep)
    part.attrs = {**result.attrs, "hook": kind,
                  "hook_names": [n for n in result.attrs.get("hook_names", []) if hook_suffix(n) == kind]}
    return part
