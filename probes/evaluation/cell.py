"""One cell of a suite: train (or reuse) one model, analyse it, write its run store.

``run_cell(**kwargs)`` is the module-level function an engine calls (its keyword
arguments are small and picklable: paths, dicts). It leaves, under the suite's output
directory ``out``:

- ``models/<key>-<hash>/``: the training run (``ssmlens.interp.training``: checkpoints,
  ``final/``, ``metrics.jsonl``). A finished run with the same config hash is reused;
  an interrupted one resumes from its last checkpoint.
- ``cells/<key>``: the run store of the analyses (``ssmlens.probes.evaluation.analyses``):
  the clean batch, a small activation cache (so every dashboard page can show the
  model), every result, a one-row ``summary`` table, and the numbers in ``metrics``.
  Its config's ``fingerprint`` (checkpoint sha256, training config hash, analysis
  config, ``ANALYSIS_VERSION``) tells a finished cell from a stale one.

It returns the cell's summary row (a dict of numbers and strings). ``cell_task`` is what
the suite hands to an engine: ``run_cell`` unless the suite's deadline has passed when
the cell starts.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pandas as pd
import torch

from ssmlens.interp.training.checkpointing import RunDir, is_model_checkpoint
from ssmlens.interp.training.config import TrainConfig

# The result of a cell that found the suite's deadline passed when it started.
NOT_STARTED = "not_started"
# Raised whenever what the analyses compute or store changes: older cell stores are redone.
ANALYSIS_VERSION = 3
CELL_KIND = "evaluation_cell"


def model_dir(train: dict) -> Path:
    return Path(train["out_dir"]) / train["name"]


def store_path(out: str | Path, key: str) -> Path:
    return Path(out) / "cells" / key


def finished_checkpoint(train: dict) -> Path | None:
    """``final/`` of a finished training run of exactly this config, else None."""
    run = RunDir(model_dir(train))
    final = run.root / "final"
    summary = run.read_summary()
    saved = run.read_config()
    if not (is_model_checkpoint(final) and summary and summary.get("finished") and saved):
        return None
    if TrainConfig.from_dict(train).differences(TrainConfig.from_dict(saved)):
        return None
    return final


def fingerprint(train_hash: str, analysis: dict, checkpoint_sha256: str) -> str:
    payload = json.dumps([ANALYSIS_VERSION, train_hash, analysis, checkpoint_sha256], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def finished_summary(out: str | Path, key: str, expected: str) -> dict | None:
    """The summary row of a complete cell store whose fingerprint is ``expected``."""
    from ssmlens.interp.store import StoreError, open_run

    try:
        run = open_run(store_path(out, key))
    except StoreError:
        return None
    if run.config.get("kind") != CELL_KIND or run.config.get("fingerprint") != expected:
        return None
    return dict(run.metrics)


def expected_fingerprint(spec: dict, analysis: dict) -> str | None:
    """The fingerprint a finished cell of ``spec`` would have (None while its model is
    not trained: then the cell is not finished)."""
    from ssmlens.models.checkpoint import weights_digest

    final = finished_checkpoint(spec["train"])
    return None if final is None else fingerprint(spec["train_hash"], analysis, weights_digest(final))


def analysis_device(setting: str, train_device: str) -> torch.device:
    """The device of a cell's analyses: the training run's ("train"), or the one named."""
    from ssmlens.interp.training.optim import resolve_device

    return resolve_device(train_device if setting == "train" else setting)


def train_or_reuse(spec: dict, progress: bool) -> tuple[Path, dict, bool]:
    """(checkpoint, training summary, whether a finished run was reused)."""
    from ssmlens.interp.training import Trainer

    final = finished_checkpoint(spec["train"])
    if final is not None:
        return final, RunDir(model_dir(spec["train"])).read_summary() or {}, True
    config = TrainConfig.from_dict({**spec["train"], "progress": progress})
    result = Trainer(config).fit()
    return result.checkpoint, RunDir(result.run_dir).read_summary() or {}, False


def run_cell(*, out: str, spec: dict, task: str, task_config: dict, analysis: dict, suite: str,
             progress: bool = True, threads: int | None = None, cache_examples: int = 4) -> dict:
    """Train or reuse the model of ``spec`` (a ``CellSpec`` as a dict), analyse it and
    write ``cells/<key>`` (module docstring); returns the summary row."""
    from ssmlens.interp.store import create_run
    from ssmlens.models import load_model
    from ssmlens.models.checkpoint import weights_digest
    from ssmlens.probes.evaluation.analyses import analyse
    from ssmlens.probes.evaluation.suite import AnalysisConfig

    if threads is not None:
        torch.set_num_threads(int(threads))
    key = spec["key"]
    t0 = time.perf_counter()
    checkpoint, train_summary, reused = train_or_reuse(spec, progress)
    train_wall = time.perf_counter() - t0
    sha = weights_digest(checkpoint)
    expected = fingerprint(spec["train_hash"], analysis, sha)
    done = finished_summary(out, key, expected)
    if done is not None:
        return done
    cfg = AnalysisConfig(**analysis)
    device = analysis_device(cfg.device, spec["train"]["device"])
    model = load_model(checkpoint, device=device).eval()
    t1 = time.perf_counter()
    fallback = None
    try:
        result = analyse(model, task, task_config, cfg, progress=progress, desc=f"{key} analyses")
    except Exception as e:
        if device.type == "cpu":
            raise
        # the probes are tested on the CPU; a failure on the GPU is retried there, and recorded
        fallback = f"{type(e).__name__} on {device}: {e}"[:500]
        model, device = model.cpu(), torch.device("cpu")
        result = analyse(model, task, task_config, cfg, progress=progress, desc=f"{key} analyses (cpu)")
    with torch.no_grad():
        _, cache = model.run_with_cache(result.batch.tokens[:cache_examples].to(device))
        cache = {k: v.cpu() for k, v in cache.items()}
    row = {
        "key": key, "family": spec["family"], "label": spec["label"], "width": spec["width"], "lr": spec["lr"],
        "seed": spec["seed"], "n_params": sum(p.numel() for p in model.parameters()),
        "train_steps": int(train_summary.get("step", 0)), "train_time_s": float(train_summary.get("train_time_s", 0)),
        "stop_reason": str(train_summary.get("stop_reason", "")),
        "train_eval_acc": float((train_summary.get("eval") or {}).get("acc", float("nan"))),
        "reused_model": reused, "train_wall_s": round(train_wall, 2),
        "analysis_s": round(time.perf_counter() - t1, 2), "fingerprint": expected, "analysis_device": str(device),
        **({"analysis_fallback": fallback} if fallback else {}), **result.metrics,
    }
    config = {
        "kind": CELL_KIND, "suite": suite, "key": key, "family": spec["family"], "model_type": spec["family"],
        "label": spec["label"], "width": spec["width"], "lr": spec["lr"], "seed": spec["seed"],
        "task": task, "task_config": task_config, "model_config": model.config_dict(), "train": spec["train"],
        "train_hash": spec["train_hash"], "analysis": analysis, "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha, "fingerprint": expected, "analysis_version": ANALYSIS_VERSION,
    }
    with create_run(store_path(out, key), config, overwrite=True) as w:
        w.set_checkpoint(str(checkpoint), sha256=sha)
        w.write_batch(result.batch)
        w.write_cache(cache)
        for name, da in result.results.items():
            w.write_result(name, da)
        w.write_table("summary", pd.DataFrame([{k: v for k, v in row.items() if not isinstance(v, list)}]))
        w.set_metrics(row)
    return row


def cell_task(*, deadline: float | None = None, **kwargs) -> dict:
    """An engine's cell: ``run_cell(**kwargs)``, or ``{NOT_STARTED: True}`` at once when the
    suite's ``deadline`` (a ``time.time()`` instant) has passed as the cell starts (on
    Ray, cells queued behind others start late: the rule is the same on every engine)."""
    if deadline is not None and time.time() >= deadline:
        return {NOT_STARTED: True}
    return run_cell(**kwargs)
