"""Run directories: checkpoints, the ``last`` pointer, metrics and the final/best models.

Layout of ``runs/<name>/``::

    train_config.json            the TrainConfig of the run
    metrics.jsonl                one JSON object per evaluation (appended)
    summary.json                 written when a ``fit`` ends: final/best eval, speed
    checkpoints/
        step_000400/             a resumable checkpoint
            config.json          } models.save_model: loads with models.load_model
            model.safetensors    }
            trainer_state.pt     optimizer state, step, RNG states, best/last eval
            train_config.json
        last.txt                 name of the newest complete checkpoint ("step_000400")
    best/                        model with the best held-out accuracy (+ eval.json)
    final/                       model at the end of training (+ eval.json)

Every directory is written under a temporary name and renamed into place, so an
interrupted save never leaves something that looks complete; ``last.txt`` is updated
only after its checkpoint is whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ssmlens.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, save_model

TRAIN_CONFIG = "train_config.json"
TRAINER_STATE = "trainer_state.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVAL_FILE = "eval.json"
LAST_POINTER = "last.txt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def is_model_checkpoint(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


class RunDir:
    """The files of one run under ``root`` (``runs/<name>``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.metrics_path = self.root / METRICS

    # -- setup -----------------------------------------------------------------
    def exists(self) -> bool:
        return self.root.is_dir() and any(self.root.iterdir())

    def clear(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)

    def write_config(self, config) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_json(self.root / TRAIN_CONFIG, config.to_dict())

    def read_config(self) -> dict | None:
        path = self.root / TRAIN_CONFIG
        return _read_json(path) if path.is_file() else None

    # -- step checkpoints ------------------------------------------------------
    def save_checkpoint(self, model, state: dict[str, Any], config, keep: int) -> Path:
        """Write ``checkpoints/step_N`` (model + trainer state), point ``last.txt`` at it,
        and delete all but the newest ``keep`` step checkpoints."""
        name = step_dir_name(int(state["step"]))
        final = self.checkpoints / name
        tmp = self.checkpoints / (name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        save_model(model, tmp)
        torch.save(state, tmp / TRAINER_STATE)
        _write_json(tmp / TRAIN_CONFIG, config.to_dict())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_text_atomic(self.checkpoints / LAST_POINTER, name + "\n")
        self._prune(keep, protect=final)
        return final

    def step_checkpoints(self) -> list[Path]:
        """Complete step checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [
            (int(m.group(1)), p) for p in self.checkpoints.iterdir()
            if (m := _STEP_DIR.match(p.name)) and p.is_dir() and (p / TRAINER_STATE).is_file()
        ]
        return [p for _, p in sorted(found)]

    def last_checkpoint(self) -> Path | None:
        """The checkpoint ``last.txt`` names, else the newest complete one, else None."""
        pointer = self.checkpoints / LAST_POINTER
        if pointer.is_file():
            path = self.checkpoints / pointer.read_text().strip()
            if path.is_dir() and (path / TRAINER_STATE).is_file() and is_model_checkpoint(path):
                return path
        found = self.step_checkpoints()
        return found[-1] if found else None

    def _prune(self, keep: int, protect: Path) -> None:
        for path in self.step_checkpoints()[:-keep]:
            if path != protect:
                shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def load_state(checkpoint: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
        path = Path(checkpoint) / TRAINER_STATE
        if not path.is_file():
            raise CheckpointError(f"missing trainer state {path}")
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except Exception as e:  # truncated or foreign file
            raise CheckpointError(f"corrupt trainer state {path}: {e}") from None

    # -- final / best models ---------------------------------------------------
    def save_model_as(self, label: str, model, config, metrics: dict) -> Path:
        """Write ``<root>/<label>/`` (model checkpoint + train config + ``eval.json``)."""
        final = self.root / label
        tmp = self.root / (label + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        save_model(model, tmp)
        _write_json(tmp / TRAIN_CONFIG, config.to_dict())
        _write_json(tmp / EVAL_FILE, metrics)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    # -- metrics -----------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, after_step: int) -> None:
        """Drop records past ``after_step``: a resumed run re-evaluates those steps."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
        _write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_summary(self, summary: dict) -> None:
        _write_json(self.root / SUMMARY, summary)

    def read_summary(self) -> dict | None:
        path = self.root / SUMMARY
        return json.loads(path.read_text()) if path.is_file() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A model checkpoint directory from a checkpoint, a run directory (its ``final/``,
    else its last step checkpoint) or a run's ``checkpoints/`` directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if is_model_checkpoint(path):
        return path
    run = RunDir(path.parent if path.name == "checkpoints" else path)
    if is_model_checkpoint(run.root / "final"):
        return run.root / "final"
    last = run.last_checkpoint()
    if last is not None:
        return last
    raise CheckpointError(
        f"{path} is neither a checkpoint ({CONFIG_FILE} + {WEIGHTS_FILE}) nor a run directory with one")


def find_train_config(checkpoint: str | Path) -> dict | None:
    """The ``train_config.json`` of a checkpoint: in its directory or its run's."""
    path = Path(checkpoint).resolve()
    for folder in (path, path.parent, path.parent.parent):
        candidate = folder / TRAIN_CONFIG
        if candidate.is_file():
            return _read_json(candidate)
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt {path}: {e}") from None


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, value: Any) -> None:
    _write_text_atomic(path, json.dumps(value, indent=2) + "\n")
