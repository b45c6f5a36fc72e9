"""Ablation study specs: models, tasks, ablations; built in Python or read from YAML.

``AblationStudy(models, tasks, ablations, ...)`` validates everything at
construction (ablations are parsed, task configs tried, registry names checked) and
``load_study(path)`` / ``study_from_dict(d)`` read the YAML form described in
``ssmlens.probes.ablation_study``. Every error is a ``StudyError`` naming the field, e.g.
``study.tasks[0].n: expected an integer >= 1, got 'many'``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssmlens.probes.ablation import Ablation, AblationError, NoAblation, parse_ablation

STUDY_METRICS = ("acc", "loss", "seq_acc")


class StudyError(ValueError):
    """A study spec with a bad field; the message names the field (``study.tasks[0].n``)."""


# ---- specs ---------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """One model: a checkpoint, a fresh registry model, or an in-memory ``instance``."""

    name: str
    checkpoint: str | None = None
    model: str | None = None
    config: dict = field(default_factory=dict)
    seed: int = 0
    instance: Any = field(default=None, repr=False)

    def load(self, vocab_size: int | None = None, device: str = "cpu"):
        if self.instance is not None:
            model = self.instance
        elif self.checkpoint is not None:
            model = _load_checkpoint(self.checkpoint)
        else:
            from ssmlens.models import build_model

            cfg = dict(self.config)
            if vocab_size is not None:
                cfg.setdefault("vocab_size", vocab_size)
            torch.manual_seed(int(self.seed))
            model = build_model(self.model, **cfg)
        return model.to(device).eval()

    def describe(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "checkpoint", "model", "config", "seed")}
        if self.instance is not None:
            d["instance"] = type(self.instance).__name__
        return d


def _load_checkpoint(path: str):
    from ssmlens.models import load_model

    try:
        from ssmlens.interp.training import resolve_checkpoint  # a run directory -> its final/last checkpoint

        path = resolve_checkpoint(path)
    except ImportError:
        pass
    return load_model(path)


@dataclass
class TaskSpec:
    """One evaluation batch: ``make_task(task, **config).sample(n, seed)``."""

    name: str
    task: str | None = None
    config: dict = field(default_factory=dict)
    n: int = 256
    seed: int = 1234

    @property
    def vocab_size(self) -> int:
        from ssmlens.interp.tasks import make_task

        return make_task(self.task or self.name, **self.config).vocab_size

    def make_batch(self):
        from ssmlens.interp.tasks import make_task

        return make_task(self.task or self.name, **self.config).sample(self.n, self.seed)

    def describe(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class AblationStudy:
    models: list
    tasks: list
    ablations: list
    metrics: list = field(default_factory=lambda: ["acc", "loss"])
    baseline: bool = True
    batch_size: int = 128
    device: str = "cpu"
    name: str = "ablation_study"

    def __post_init__(self) -> None:
        self.models = _entries(self.models, ModelSpec, "models", _model_entry)
        self.tasks = _entries(self.tasks, TaskSpec, "tasks", _task_entry)
        if not isinstance(self.ablations, (list, tuple)):
            raise StudyError(f"study.ablations: expected a list, got {type(self.ablations).__name__}")
        parsed: list[Ablation] = [NoAblation()] if self.baseline else []
        for i, spec in enumerate(self.ablations):
            try:
                a = parse_ablation(spec)
            except (AblationError, TypeError) as e:
                raise StudyError(f"study.ablations[{i}]: {e}") from None
            if a.label in [p.label for p in parsed]:
                if isinstance(a, NoAblation):
                    continue
                raise StudyError(f"study.ablations[{i}]: {a.label!r} is listed twice")
            parsed.append(a)
        if not parsed:
            raise StudyError("study.ablations: empty (and baseline is false): nothing to evaluate")
        self.ablations = parsed
        if isinstance(self.metrics, str):
            self.metrics = [self.metrics]
        for i, m in enumerate(self.metrics):
            if m not in STUDY_METRICS:
                raise StudyError(f"study.metrics[{i}]: unknown metric {m!r}; valid: {', '.join(STUDY_METRICS)}")
        _check_int(self.batch_size, "study.batch_size")
        for what, items in (("models", self.models), ("tasks", self.tasks)):
            names = [x.name for x in items]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise StudyError(f"study.{what}: duplicate name(s) {dup}")

    def cells(self) -> list[tuple[str, str, str]]:
        return [(m.name, t.name, a.label) for m in self.models for t in self.tasks for a in self.ablations]

    def to_config(self) -> dict:
        return {"kind": "ablation_study", "name": self.name, "models": [m.describe() for m in self.models],
                "tasks": [t.describe() for t in self.tasks], "ablations": [a.label for a in self.ablations],
                "metrics": list(self.metrics), "baseline": self.baseline, "batch_size": self.batch_size,
                "device": self.device}


def _check_int(value, where: str, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise StudyError(f"{where}: expected an integer >= {low}, got {value!r}")


def _fields_of(cls, d: dict, where: str) -> dict:
    valid = [f.name for f in dataclasses.fields(cls) if f.name != "instance"]
    for key in d:
        if key not in valid:
            raise StudyError(f"{where}.{key}: unknown field; valid fields: {', '.join(valid)}")
    return d


def _model_entry(value, where: str, name: str | None) -> ModelSpec:
    if isinstance(value, ModelSpec):
        return value
    if isinstance(value, (str, Path)) and name is not None:
        return ModelSpec(name, checkpoint=str(value))
    if hasattr(value, "hook_dict") and name is not None:
        return ModelSpec(name, instance=value)
    if not isinstance(value, dict):
        raise StudyError(f"{where}: expected a mapping with name and checkpoint (or model), got {value!r}")
    d = _fields_of(ModelSpec, {**({"name": name} if name else {}), **value}, where)
    if "name" not in d:
        raise StudyError(f"{where}: missing field 'name'")
    if (d.get("checkpoint") is None) == (d.get("model") is None):
        raise StudyError(f"{where}: give exactly one of 'checkpoint' (a saved model) or 'model' (a registry name)")
    if not isinstance(d.get("config", {}), dict):
        raise StudyError(f"{where}.config: expected a mapping, got {d['config']!r}")
    if d.get("model") is not None:
        from ssmlens.models import model_names

        if d["model"] not in model_names():
            raise StudyError(f"{where}.model: unknown model {d['model']!r}; valid: {', '.join(model_names())}")
    _check_int(d.get("seed", 0), f"{where}.seed", 0)
    return ModelSpec(**d)


def _task_entry(value, where: str, name: str | None) -> TaskSpec:
    if isinstance(value, TaskSpec):
        return value
    value = {} if value is None else value
    if isinstance(value, str) and name is not None:
        value = {"task": value}
    if not isinstance(value, dict):
        raise StudyError(f"{where}: expected a mapping with name, task, config, n, seed; got {value!r}")
    d = _fields_of(TaskSpec, {**({"name": name} if name else {}), **value}, where)
    if "name" not in d:
        raise StudyError(f"{where}: missing field 'name'")
    from ssmlens.interp.tasks import TASKS

    task = d.get("task") or d["name"]
    if task not in TASKS:
        raise StudyError(f"{where}.task: unknown task {task!r}; valid: {', '.join(TASKS)}")
    if not isinstance(d.get("config", {}), dict):
        raise StudyError(f"{where}.config: expected a mapping, got {d['config']!r}")
    _check_int(d.get("n", 1), f"{where}.n")
    _check_int(d.get("seed", 0), f"{where}.seed", 0)
    spec = TaskSpec(**d)
    try:
        from ssmlens.interp.tasks import make_task

        make_task(task, **spec.config)
    except (ValueError, TypeError) as e:
        raise StudyError(f"{where}.config: {e}") from None
    return spec


def _entries(value, cls, what: str, convert) -> list:
    if isinstance(value, dict):
        items = [convert(v, f"study.{what}.{k}", str(k)) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [convert(v, f"study.{what}[{i}]", None) for i, v in enumerate(value)]
    else:
        raise StudyError(f"study.{what}: expected a list (or a mapping name -> spec), got {type(value).__name__}")
    if not items:
        raise StudyError(f"study.{what}: empty")
    return items


def study_from_dict(d: dict) -> AblationStudy:
    """An AblationStudy from a plain dict (the parsed YAML), naming any bad field."""
    if not isinstance(d, dict):
        raise StudyError(f"study: expected a mapping at the top level, got {type(d).__name__}")
    valid = [f.name for f in dataclasses.fields(AblationStudy)]
    for key in d:
        if key not in valid:
            raise StudyError(f"study.{key}: unknown field; valid fields: {', '.join(valid)}")
    for key in ("models", "tasks", "ablations"):
        if key not in d:
            raise StudyError(f"study: missing field {key!r}")
    if "baseline" in d and not isinstance(d["baseline"], bool):
        raise StudyError(f"study.baseline: expected true or false, got {d['baseline']!r}")
    return AblationStudy(**d)


def load_study(path: str | Path) -> AblationStudy:
    """Read a study YAML file (module docstring); errors name the file and the field."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise StudyError(f"{path}: not valid YAML: {e}") from None
    try:
        return study_from_dict(d)
    except StudyError as e:
        raise StudyError(f"{path}: {e}") from None


__all__ = ["STUDY_METRICS", "AblationStudy", "ModelSpec", "StudyError", "TaskSpec", "load_study", "study_from_dict"]
