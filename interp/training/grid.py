"""Training grids: the Cartesian product of a few settings, one engine cell per training.

    ssmlens train --task ar --steps 2000 --grid model=mamba,transformer --grid lr=1e-3,3e-3 \\
        --engine ray --gpus-per-task 0.25

or ``grid: {model: [mamba, transformer], lr: [1.0e-3, 3.0e-3]}`` in a ``--config`` file.
A grid field is any ``TrainConfig`` field or ``model_config.FIELD`` / ``task_config.FIELD``.
Each grid point is an ordinary training run, ``<out_dir>/<name>/`` (name: the model,
the task and the grid values, e.g. ``mamba-ar-lr0.003``), trained by the ``Trainer`` as
``ssmlens train`` would, so it checkpoints, resumes after a kill and is skipped once
finished. The coordinator writes one line per finished point to
``<out_dir>/<grid name>.grid.jsonl`` as points finish (rewritten at the start of each run
of the grid: finished points first).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

from ssmlens.interp.training.config import ConfigError, TrainConfig, field_names

_NESTED = ("model_config", "task_config")


def parse_grid(items: dict[str, Any]) -> dict[str, list]:
    """``{"lr": [1e-3, 3e-3], "model_config.d_state": [8, 16]}`` checked: known fields, lists."""
    grid: dict[str, list] = {}
    valid = field_names()
    for key, values in items.items():
        name = str(key).replace("-", "_")
        name = "n_layers" if name == "layers" else name
        top, _, sub = name.partition(".")
        if (sub and top not in _NESTED) or (not sub and (name not in valid or name in _NESTED)):
            raise ConfigError(f"grid field {key!r}: not a training config field (or model_config.FIELD / "
                              f"task_config.FIELD); valid fields: {', '.join(f for f in valid if f not in _NESTED)}")
        if name in ("name", "out_dir"):
            raise ConfigError(f"grid field {key!r}: each grid point gets its own name under one out_dir")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise ConfigError(f"grid field {key!r}: no values")
        grid[name] = values
    return grid


def parse_grid_flags(items: list[str]) -> dict[str, list]:
    """``["model=mamba,transformer", "lr=1e-3,3e-3"]`` -> ``{"model": [...], "lr": [...]}`` (YAML-typed)."""
    import yaml

    out: dict[str, list] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ConfigError(f"--grid expects FIELD=VALUE1,VALUE2,..., got {item!r}")
        out[key.strip()] = [yaml.safe_load(v) for v in text.split(",") if v.strip()]
    return parse_grid(out)


def _label(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def expand_grid(base: TrainConfig, grid: dict[str, list]) -> list[TrainConfig]:
    """One TrainConfig per grid point, each with its own run name."""
    keys = list(grid)
    configs, names = [], set()
    for values in itertools.product(*(grid[k] for k in keys)):
        fields = base.to_dict()
        for key, value in zip(keys, values):
            top, _, sub = key.partition(".")
            if sub:
                fields[top] = {**fields[top], sub: value}
            else:
                fields[key] = value
        parts = [base.name] if base.name else []
        parts += [_label(fields["model"]), _label(fields["task"])]
        parts += [f"{k.rpartition('.')[2]}{_label(v)}" for k, v in zip(keys, values) if k not in ("model", "task")]
        fields["name"] = "-".join(parts)
        if fields["name"] in names:
            raise ConfigError(f"grid points share the run name {fields['name']!r}; give distinct values")
        names.add(fields["name"])
        configs.append(TrainConfig.from_dict(fields))
    return configs


def finished_summary(config: TrainConfig) -> dict | None:
    """The summary of a finished run of exactly ``config`` (None: it must be trained or resumed)."""
    from ssmlens.interp.training.checkpointing import RunDir

    run = RunDir(config.run_dir)
    try:
        summary, saved = run.read_summary(), run.read_config()
    except (OSError, ValueError):
        return None
    if not summary or not saved or not summary.get("finished") or summary.get("steps") != config.steps:
        return None
    try:
        return summary if not config.differences(TrainConfig.from_dict(saved)) else None
    except ConfigError:
        return None


def train_cell(config: dict) -> dict:
    """Engine cell: train (or resume) one grid point; returns its summary (small)."""
    from ssmlens.interp.training.loop import Trainer

    cfg = TrainConfig.from_dict(config)
    result = Trainer(cfg).fit()
    return {"run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint), "step": result.step,
            "finished": result.finished, "stop_reason": result.stop_reason, "eval": result.eval,
            "best_eval": result.best_eval, "train_time_s": result.train_time_s}


def grid_row(config: TrainConfig, grid: dict[str, list], status: str, summary: dict | None,
             error: str | None = None) -> dict:
    """One line of the grid's table: the point's values, its status and eval metrics."""
    fields = config.to_dict()
    row: dict[str, Any] = {"name": config.run_name, "run_dir": str(config.run_dir)}
    for key in grid:
        top, _, sub = key.partition(".")
        row[key] = fields[top][sub] if sub else fields[key]
    ev = (summary or {}).get("eval") or {}
    row.update(status=status, step=(summary or {}).get("step"), acc=ev.get("acc", math.nan),
               loss=ev.get("loss", math.nan), best_acc=((summary or {}).get("best_eval") or {}).get("acc", math.nan),
               error=error)
    return row


def run_grid(base: TrainConfig, grid: dict[str, list], *, engine: dict | None = None, progress: bool = True,
             gpus: float = 0.0, table_name: str | None = None) -> tuple[list[dict], Path]:
    """Train every grid point not finished yet on an engine. Returns the rows (grid
    order) and the path of the ``.grid.jsonl`` file written as points finish."""
    from ssmlens.interp.engines import Cell, run_cells

    configs = expand_grid(base.replace(progress=False), grid)
    out = Path(base.out_dir) / f"{table_name or base.name or 'grid'}.grid.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    cells = []
    for cfg in configs:
        cfg = cfg.replace(out_dir=str(Path(cfg.out_dir).resolve()))  # workers may run in another directory
        summary = finished_summary(cfg)
        if summary is not None:
            rows[cfg.run_name] = grid_row(cfg, grid, "done", summary)
        else:
            cells.append(Cell(cfg.run_name, train_cell, {"config": cfg.to_dict()}, gpus=gpus))
    by_key = {c.key: TrainConfig.from_dict(c.kwargs["config"]) for c in cells}
    with out.open("w") as f:
        for row in rows.values():
            f.write(json.dumps(row) + "\n")

        def record(outcome) -> None:  # in the coordinator: one line per finished point, at once
            cfg = by_key[outcome.key]
            row = grid_row(cfg, grid, outcome.status, outcome.result if outcome.ok else None, outcome.error)
            rows[outcome.key] = row
            f.write(json.dumps(row) + "\n")
            f.flush()

        run_cells(cells, **(engine or {}), progress=progress, desc="training grid", on_result=record)
    return [rows[c.run_name] for c in configs if c.run_name in rows], out
