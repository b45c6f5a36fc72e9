"""Ablation studies: models × tasks × ablations, evaluated into one tidy table.

A study is an ``AblationStudy`` (Python) or a YAML file (``load_study``)::

    name: recall-ablations
    models:                       # list of specs, or a mapping name -> checkpoint / spec
      - name: mamba
        checkpoint: runs/mamba-ar           # a checkpoint or a training run directory
      - name: tiny
        model: mamba                        # or a fresh (untrained) registry model
        config: {d_model: 32, n_layers: 2}  # vocab_size defaults to the largest task's
        seed: 0
    tasks:
      - name: ar8
        task: ar                            # registry name (default: the entry's name)
        config: {n_keys: 16, n_values: 16, n_pairs: 8}
        n: 256                              # examples
        seed: 1234                          # sampling seed
    ablations: [no_conv, "clamp_delta:0.01", freeze_delta@1, "drop_head:0.1",
                {kind: mean, hook: blocks.0.hook_resid_post, positions: [query]}]
    metrics: [acc, loss]                    # of acc, loss, seq_acc
    baseline: true                          # add the unablated cell "none"
    batch_size: 128
    device: cpu

``run_study(study, out)`` evaluates every cell (model, task, ablation) with a tqdm
progress bar and returns the table with columns ``model, task, ablation, metric,
value, n, status`` (n: the answers, or examples for seq_acc, the value averages over;
status: "ok", "n/a" for a cell whose ablation does not apply to its model, or
"failed"). With
``out`` it writes a run store: each finished cell at once as a table
``ablation_parts/<k>`` (so an interrupted study keeps its cells), then the whole
table ``ablation`` and arrays ``ablation/<metric>`` with dims ``(model, task,
ablation)``. Re-running into the same ``out`` reads the finished cells from that run
(complete or not) and evaluates only the others; when none is left, nothing is
loaded, evaluated or rewritten. Cells whose ablation does not apply to a model
(no_memory on Mamba; a value ablation of ``mixer.hook_ssm_state`` on a Transformer)
are not evaluated: an ``AblationSkipped`` warning, rows with status "n/a", value NaN
and n 0 in the table (NaN in the arrays, "n/a" in the figure), the reasons in the
run's metrics and ``table.attrs["skipped"]``; the study goes on, and re-runs do not
retry them.

Each cell is an engine cell (``ssmlens.probes.ablation_cell``, ``ssmlens.interp.engines``):
``run_study(study, out, engine={"engine": "ray", "gpus_per_task": 0.25})`` evaluates them
as Ray tasks; the coordinator alone writes the run, as cells finish. A cell that still
fails after the engine's retries is listed in ``table.attrs["failed"]`` and the run's
metrics, its values are NaN, and a re-run evaluates it again.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from ssmlens.probes.ablation import Ablation
from ssmlens.probes.ablation_spec import (
    STUDY_METRICS, AblationStudy, ModelSpec, StudyError, TaskSpec, load_study, study_from_dict,
)

COLUMNS = ["model", "task", "ablation", "metric", "value", "n", "status"]
OK, NOT_APPLICABLE, FAILED = "ok", "n/a", "failed"  # the status column
TABLE = "ablation"
PARTS = "ablation_parts"


class AblationSkipped(UserWarning):
    """A cell whose ablation does not apply to its model (warned, listed, not evaluated)."""


# ---- metrics --------------------------------------------------------------------------------


def answer_metrics(logits: Tensor, tokens: Tensor, loss_mask: Tensor) -> dict[str, tuple[float, int]]:
    """{metric: (sum, count)} at supervised positions: prediction at t of tokens[t + 1]."""
    mask = loss_mask[:, :-1].to(logits.device)
    pred, target = logits[:, :-1].float(), tokens[:, 1:].to(logits.device)
    hit = (pred.argmax(-1) == target) & mask
    ce = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none").view_as(target) * mask
    per_seq = mask.sum(1)
    seq_ok = (hit.sum(1) == per_seq) & (per_seq > 0)
    return {"acc": (float(hit.sum()), int(mask.sum())), "loss": (float(ce.sum()), int(mask.sum())),
            "seq_acc": (float(seq_ok.sum()), int((per_seq > 0).sum()))}


@torch.no_grad()
def evaluate_cell(model, batch, ablation: Ablation, metrics, batch_size: int = 128) -> list[dict]:
    """Rows (metric, value, n) of one model on one batch under one ablation."""
    bound = ablation.bind(model, batch)
    device = next(model.parameters()).device
    sums: dict[str, list[float]] = {m: [0.0, 0] for m in metrics}
    for start in range(0, len(batch), batch_size):
        rows = slice(start, start + batch_size)
        with model.hooks(fwd_hooks=bound.fwd_hooks(rows)) as m:
            logits = m(batch.tokens[rows].to(device))
        for name, (s, n) in answer_metrics(logits, batch.tokens[rows], batch.loss_mask[rows]).items():
            if name in sums:
                sums[name][0] += s
                sums[name][1] += n
    return [{"metric": m, "value": s / n if n else math.nan, "n": int(n), "status": OK} for m, (s, n) in sums.items()]


# ---- the runner -----------------------------------------------------------------------------


def _previous(out) -> tuple[pd.DataFrame, list[dict], bool, bool]:
    """(rows already in the run at ``out``, its skipped cells, whether a run exists,
    whether it is complete)."""
    from ssmlens.interp.store import RunNotFoundError, open_run

    try:
        run = open_run(out, require_complete=False)
    except RunNotFoundError:
        return pd.DataFrame(columns=COLUMNS), [], False, False
    kind = (run.config or {}).get("kind")
    if kind != "ablation_study":
        raise StudyError(f"{out} holds a run that is not an ablation study (kind {kind!r}); "
                         "choose another output or pass overwrite=True to replace it")
    tables = run.tables()
    if TABLE in tables:
        frames = [run.table(TABLE)]
    else:
        frames = [run.table(t) for t in tables if t.startswith(PARTS + "/")]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    failed = {(f["model"], f["task"], f["ablation"]) for f in run.metrics.get("failed") or []}
    if failed:  # the NaN rows of failed cells: those cells are evaluated again
        df = df[[k not in failed for k in zip(df["model"], df["task"], df["ablation"])]]
    skipped = list(run.metrics.get("skipped") or [])
    if "status" not in df.columns:  # written before the status column: every row was evaluated
        df["status"] = OK
    listed = set(zip(df["model"], df["task"], df["ablation"]))
    missing = [s for s in skipped if (s["model"], s["task"], s["ablation"]) not in listed]
    if missing:  # (older runs kept skipped cells out of the table)
        metrics = list(dict.fromkeys(df["metric"])) or list((run.config or {}).get("metrics") or [])
        df = pd.concat([df, pd.DataFrame(_na_rows(missing, metrics))], ignore_index=True)
    return _tidy(df), skipped, True, run.is_complete


def _na_rows(cells: list[dict], metrics) -> list[dict]:
    """Table rows of cells whose ablation does not apply: value NaN, n 0, status n/a."""
    return [{"model": c["model"], "task": c["task"], "ablation": c["ablation"], "metric": m, "value": math.nan,
             "n": 0, "status": NOT_APPLICABLE} for c in cells for m in metrics]


def _finished(df: pd.DataFrame, metrics) -> set[tuple[str, str, str]]:
    if df.empty:
        return set()
    have = df.groupby(["model", "task", "ablation"])["metric"].agg(set)
    return {key for key, ms in have.items() if set(metrics) <= ms}


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(status=df["status"] if "status" in df.columns else OK)[COLUMNS].copy()
    for c in ("model", "task", "ablation", "metric", "status"):
        df[c] = df[c].astype(str)
    df["value"] = df["value"].astype(float)
    df["n"] = df["n"].astype(np.int64)
    return df.reset_index(drop=True)


def result_arrays(df: pd.DataFrame):
    """{metric: DataArray (model, task, ablation)} from a study table (NaN where missing)."""
    import xarray as xr

    out = {}
    order = {c: list(dict.fromkeys(df[c])) for c in ("model", "task", "ablation")}
    for metric, part in df.groupby("metric", sort=False):
        grid = part.set_index(["model", "task", "ablation"])["value"]
        grid = grid[~grid.index.duplicated(keep="last")]
        full = pd.MultiIndex.from_product([order["model"], order["task"], order["ablation"]])
        values = grid.reindex(full).to_numpy().reshape(*(len(order[c]) for c in ("model", "task", "ablation")))
        out[str(metric)] = xr.DataArray(values, dims=("model", "task", "ablation"), coords=order, name=str(metric))
    return out


def run_study(study: AblationStudy | dict | str | Path, out=None, *, progress: bool = True,
              overwrite: bool = False, engine: dict | None = None) -> pd.DataFrame:
    """Evaluate every unfinished cell of ``study``; see the module docstring.

    ``out``: run store URL (None: in memory only). ``overwrite``: ignore (and replace)
    what a previous run at ``out`` holds. ``engine``: keyword arguments of
    ``ssmlens.interp.engines.run_cells`` (``{"engine": "ray", "gpus_per_task": 0.25,
    "retries": 2}``; default: the local engine). Returns the tidy table of all cells.
    """
    if isinstance(study, (str, Path)):
        study = load_study(study)
    elif isinstance(study, dict):
        study = study_from_dict(study)
    prev, skipped, exists, complete = (pd.DataFrame(columns=COLUMNS), [], False, False)
    if out is not None and not overwrite:
        prev, skipped, exists, complete = _previous(out)
    # cells found not applicable before count as finished: they would be skipped again
    done = _finished(prev, study.metrics) | {(s["model"], s["task"], s["ablation"]) for s in skipped}
    todo = [c for c in study.cells() if c not in done]
    if not todo and complete:
        table = _tidy(prev)
        table.attrs["skipped"] = skipped
        return table

    writer = None
    if out is not None:
        from ssmlens.interp.store import create_run

        writer = create_run(out, study.to_config(), overwrite=exists or overwrite)
    new_rows: list[dict] = []
    failed: list[dict] = []
    part = 0
    try:
        if writer is not None and not prev.empty:
            writer.write_table(f"{PARTS}/{part:05d}", _tidy(prev))  # keep earlier cells at once
            part += 1
        if writer is not None and skipped:
            writer.set_metrics(skipped=skipped)
        cells, where_of = _cells(study, todo)

        def record(outcome) -> None:  # in this process, as each cell finishes: stream it to disk
            nonlocal part
            m_name, t_name, label = where_of[outcome.key]
            where = {"model": m_name, "task": t_name, "ablation": label}
            if not outcome.ok:
                failed.append({**where, "error": outcome.error})
                if writer is not None:
                    writer.set_metrics(failed=failed)
            else:
                if "skipped" in outcome.result:
                    warnings.warn(f"not applicable, marked n/a: {m_name} / {t_name} / {label}: "
                                  f"{outcome.result['skipped']}", AblationSkipped, stacklevel=2)
                    cell = {**where, "reason": outcome.result["skipped"]}
                    skipped.append(cell)
                    if writer is not None:
                        writer.set_metrics(skipped=skipped)
                    rows = _na_rows([cell], study.metrics)
                else:
                    rows = [{**where, **r} for r in outcome.result["rows"]]
                new_rows.extend(rows)
                if writer is not None:
                    writer.write_table(f"{PARTS}/{part:05d}", _tidy(pd.DataFrame(rows)))
                    part += 1

        from ssmlens.interp.engines import run_cells
        from ssmlens.probes.ablation_cell import forget

        try:
            run_cells(cells.values(), **(engine or {}), progress=progress, desc=f"ablation study {study.name}",
                      on_result=record)
        finally:
            forget()
        # a failed cell is listed and its values are NaN; a re-run evaluates it again
        new_rows += [{**f, "metric": m, "value": math.nan, "n": 0, "status": FAILED} for f in failed
                     for m in study.metrics]
        redone = {(r["model"], r["task"], r["ablation"]) for r in new_rows}
        keep = prev[[k not in redone for k in zip(prev["model"], prev["task"], prev["ablation"])]] \
            if not prev.empty else prev
        table = _tidy(pd.concat([keep, pd.DataFrame(new_rows, columns=COLUMNS)], ignore_index=True))
        table = _sorted(table, study)
        if writer is not None:
            writer.write_table(TABLE, table)
            for metric, da in result_arrays(table).items():
                writer.write_result(f"{TABLE}/{metric}", da)
            evaluated = {(r["model"], r["task"], r["ablation"]) for r in new_rows if r.get("status", OK) == OK}
            writer.set_metrics(n_cells=len(study.cells()), n_evaluated=len(evaluated),
                               n_skipped=len(skipped), skipped=skipped, n_failed=len(failed), failed=failed)
            writer.finish()
    except BaseException as e:
        if writer is not None:
            writer.abort(e)
        raise
    table.attrs["skipped"] = skipped
    table.attrs["failed"] = failed
    return table


def _cells(study: AblationStudy, todo) -> tuple[dict, dict]:
    """Engine cells of the unfinished (model, task, ablation) triples, in study order, and
    each cell key's triple."""
    import dataclasses
    import os

    from ssmlens.interp.engines import Cell
    from ssmlens.probes.ablation_cell import ablation_cell

    models = {m.name: m for m in study.models}
    for name, m in models.items():  # workers may run elsewhere: give them absolute paths
        if m.checkpoint is not None and "://" not in str(m.checkpoint):
            models[name] = dataclasses.replace(m, checkpoint=os.path.abspath(os.path.expanduser(m.checkpoint)))
    tasks = {t.name: t for t in study.tasks}
    ablations = {a.label: a for a in study.ablations}
    vocab = max(t.vocab_size for t in study.tasks)
    gpus = 1.0 if str(study.device).startswith("cuda") else 0.0
    cells, where_of = {}, {}
    for m, t, a in todo:
        key = f"{m}/{t}/{a}"
        cells[key] = Cell(key, ablation_cell, {
            "model": models[m], "task": tasks[t], "ablation": ablations[a], "metrics": list(study.metrics),
            "batch_size": study.batch_size, "device": study.device, "vocab_size": vocab}, gpus=gpus)
        where_of[key] = (m, t, a)
    return cells, where_of


def _sorted(df: pd.DataFrame, study: AblationStudy) -> pd.DataFrame:
    """Study order (models, tasks, ablations, metrics); rows of cells not in the study last."""
    rank = {}
    for key, names in (("model", [m.name for m in study.models]), ("task", [t.name for t in study.tasks]),
                       ("ablation", [a.label for a in study.ablations]), ("metric", list(study.metrics))):
        rank[key] = df[key].map({n: i for i, n in enumerate(names)}).fillna(len(names))
    order = np.lexsort([rank[k].to_numpy() for k in ("metric", "ablation", "task", "model")])
    return df.iloc[order].reset_index(drop=True)


__all__ = [
    "COLUMNS", "STUDY_METRICS", "AblationSkipped", "AblationStudy", "ModelSpec", "StudyError", "TaskSpec", "answer_metrics",
    "evaluate_cell", "load_study", "result_arrays", "run_study", "study_from_dict",
]
