"""Evaluation suites: the YAML form, its checks, and its expansion into cells.

A suite says which models to train on which task, and how to analyse them::

    name: quick
    task: ar
    task_config: {n_keys: 16, n_values: 16, n_pairs: 3}
    widths: [16, 32]             # d_model of every model (an entry may override)
    seeds: [0]
    train:                        # TrainConfig fields shared by every model
      n_layers: 2
      steps: 1500
      lr: 1.0e-3                  # a list is a sweep: one cell per value
      max_time_s: 45              # a time budget per training
    models:
      - family: transformer       # a registry name (ssmlens.models.model_names())
        model_config: {n_heads: 2}
      - family: mamba
        model_config: {d_state: 16}
        lr: [3.0e-3, 1.0e-2]      # any TrainConfig field may be given per entry
        device: cuda
    analysis: {n_examples: 64}    # see AnalysisConfig
    resources: {gpus: 0.25, cpus: 1}   # per cell, what a Ray task asks for (an entry may override;
                                       # default gpus: 1 for a cell on a GPU device, 0 on the CPU;
                                       # ``--gpus-per-task`` overrides every cell's)

Every (entry, width, lr, seed) is a *cell*: one model trained (or reused) and
analysed, written to its own directories (``ssmlens.probes.evaluation.cell``). A cell's key
``<name>-w<width>-lr<lr>-s<seed>`` is stable across re-runs; its model directory adds
the hash of its training config, so an edited config trains a new model and a
finished one is reused. Errors are ``SuiteError`` naming the field
(``suite.models[1].lr: ...``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssmlens.interp.training.config import ConfigError, TrainConfig, coerce_numbers, field_names, normalize_keys

# Fields that do not change what is trained, left out of the config hash (where and
# how a run is shown or stored; a time budget does change it and stays in).
UNHASHED = frozenset({"name", "out_dir", "progress", "device", "log_every", "eval_batch_size", "resume",
                      "overwrite", "keep_checkpoints", "checkpoint_every"})
# Defaults of a suite's training runs where they differ from TrainConfig's (small
# synthetic tasks: no weight decay, a cheap held-out set, one kept checkpoint).
TRAIN_DEFAULTS = {"weight_decay": 0.0, "eval_size": 500, "keep_checkpoints": 1, "device": "cpu",
                  "warmup_steps": 100, "eval_every": 250}
_ENTRY_KEYS = ("family", "name", "model_config", "widths", "seeds", "resources")
_TOP_KEYS = ("name", "task", "task_config", "widths", "seeds", "train", "models", "analysis", "resources",
             "description")


class SuiteError(ValueError):
    """A suite file with a bad field; the message names it (``suite.models[0].family``)."""


@dataclass
class AnalysisConfig:
    """What is measured on every trained model (``ssmlens.probes.evaluation.analyses``).

    n_examples: task examples of the interventions (interchange, association, B'MOJO
    write patching). eval_size: examples of the accuracy and ablation evaluations.
    seed: sampling seed of those batches (corruptions use seed + 1, + 2, …).
    roles: intervention units (task roles). components: intervention sites by label
    (``ssmlens.probes.evaluation.components``; a model lacking one skips it).
    memory_sizes: B'MOJO's recall is evaluated at each (and at its trained size).
    threshold: a restored fraction / IIA at or above it counts as "carries the answer".
    recall_threshold: a model with accuracy at or above it "recalls" (report).
    device: where the analyses run: "train" (the training run's device; on a GPU, a cell
    whose analyses fail there is analysed again on the CPU and says so in its metrics),
    "cpu", or a torch device.
    """

    n_examples: int = 64
    eval_size: int = 1000
    seed: int = 1234
    roles: list = field(default_factory=lambda: ["queried_key", "queried_value", "query", "last"])
    components: list = field(default_factory=lambda: ["resid", "mixer", "state", "long_conv", "attn_k", "attn_v",
                                                      "conv"])
    memory_sizes: list = field(default_factory=lambda: [0, 1, 2, 4, 8])
    threshold: float = 0.5
    recall_threshold: float = 0.9
    batch_size: int = 250
    device: str = "train"

    def check(self, where: str = "suite.analysis") -> "AnalysisConfig":
        for name in ("n_examples", "eval_size", "batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise SuiteError(f"{where}.{name}: expected an integer >= 1, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise SuiteError(f"{where}.seed: expected an integer, got {self.seed!r}")
        for name in ("roles", "components", "memory_sizes"):
            if not isinstance(getattr(self, name), list):
                raise SuiteError(f"{where}.{name}: expected a list, got {getattr(self, name)!r}")
        from ssmlens.probes.evaluation.components import COMPONENTS

        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown:
            raise SuiteError(f"{where}.components: unknown {unknown}; valid: {', '.join(COMPONENTS)}")
        if any(not isinstance(m, int) or m < 0 for m in self.memory_sizes):
            raise SuiteError(f"{where}.memory_sizes: expected integers >= 0, got {self.memory_sizes!r}")
        if not isinstance(self.device, str) or not self.device:
            raise SuiteError(f"{where}.device: expected 'train', 'cpu' or a torch device, got {self.device!r}")
        for name in ("threshold", "recall_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise SuiteError(f"{where}.{name}: expected a number in (0, 1], got {v!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CellSpec:
    """One model of a suite: what to train and where its outputs go."""

    key: str
    family: str
    label: str  # the entry's name (default: the family)
    width: int
    lr: float
    seed: int
    train: dict  # a TrainConfig as a dict (name and out_dir filled in)
    train_hash: str
    gpus: float = 0.0
    cpus: float = 1.0

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.train)


@dataclass
class Suite:
    name: str
    task: str
    task_config: dict
    entries: list  # normalized entries (dicts)
    analysis: AnalysisConfig
    source: dict  # the suite as written (stored in the run store's config)

    def cells(self, out: str | Path) -> list[CellSpec]:
        """Every cell, in file order (entry, width, lr, seed); model dirs under ``out/models``."""
        out = Path(out)
        cells, seen = [], {}
        for i, e in enumerate(self.entries):
            for width in e["widths"]:
                for lr in e["lrs"]:
                    for seed in e["seeds"]:
                        key = f"{e['name']}-w{width}-lr{lr:g}-s{seed}"
                        if key in seen:
                            raise SuiteError(f"suite.models[{i}]: cell {key!r} is also made by suite.models"
                                             f"[{seen[key]}]; give one of the entries another name")
                        seen[key] = i
                        fields = {**e["train"], "lr": lr, "seed": seed, "d_model": width, "model": e["family"],
                                  "task": self.task, "task_config": self.task_config,
                                  "model_config": e["model_config"], "out_dir": str(out / "models")}
                        h = config_hash(fields)
                        fields["name"] = f"{key}-{h}"
                        train = TrainConfig.from_dict(fields).to_dict()
                        # a training on a GPU asks for one unless the suite gives its share
                        on_gpu = str(train.get("device", "cpu")).startswith("cuda")
                        cells.append(CellSpec(key, e["family"], e["name"], int(width), float(lr), int(seed),
                                              train, h, float(e["resources"].get("gpus", 1.0 if on_gpu else 0.0)),
                                              float(e["resources"].get("cpus", 1.0))))
        return cells


def config_hash(train: dict) -> str:
    """10 hex digits of sha256 over the training fields that decide what is trained."""
    kept = {k: v for k, v in TrainConfig.from_dict(train).to_dict().items() if k not in UNHASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _ints(value: Any, where: str, minimum: int) -> list[int]:
    values = value if isinstance(value, list) else [value]
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in values):
        raise SuiteError(f"{where}: expected an integer >= {minimum} or a list of them, got {value!r}")
    return [int(v) for v in values]


def _lrs(value: Any, where: str) -> list[float]:
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        try:
            v = float(v)  # YAML reads 1e-3 (no dot) as a string
        except (TypeError, ValueError):
            raise SuiteError(f"{where}: expected a learning rate > 0 or a list of them, got {value!r}") from None
        if not v > 0:
            raise SuiteError(f"{where}: expected a learning rate > 0 or a list of them, got {value!r}")
        out.append(v)
    return out


def _unknown(keys, valid, where: str) -> None:
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SuiteError(f"{where}: unknown field {key!r}{hint}; valid: {', '.join(valid)}")


def _train_fields(values: dict, where: str) -> dict:
    try:
        return coerce_numbers(normalize_keys(values))
    except ConfigError as e:
        raise SuiteError(f"{where}: {e}") from None


def suite_from_dict(d: dict) -> Suite:
    """A checked ``Suite`` from the YAML mapping (module docstring)."""
    from ssmlens.interp.tasks import TASKS, make_task
    from ssmlens.models import model_names

    if not isinstance(d, dict):
        raise SuiteError(f"a suite is a mapping, got {type(d).__name__}")
    _unknown(d, _TOP_KEYS, "suite")
    name = d.get("name", "suite")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise SuiteError(f"suite.name: expected a plain name (letters, digits, '-', '_', '.'), got {name!r}")
    task = d.get("task", "ar")
    if task not in TASKS:
        raise SuiteError(f"suite.task: unknown task {task!r}; valid: {', '.join(TASKS)}")
    task_config = dict(d.get("task_config") or {})
    try:
        make_task(task, **task_config)
    except (ValueError, TypeError) as e:
        raise SuiteError(f"suite.task_config: {e}") from None
    widths = _ints(d.get("widths", [64]), "suite.widths", 1)
    seeds = _ints(d.get("seeds", [0]), "suite.seeds", 0)
    train = {**TRAIN_DEFAULTS, **_train_fields(dict(d.get("train") or {}), "suite.train")}
    resources = dict(d.get("resources") or {})
    _unknown(resources, ("gpus", "cpus"), "suite.resources")
    models = d.get("models")
    if not isinstance(models, list) or not models:
        raise SuiteError("suite.models: expected a non-empty list of model entries")
    valid_models = model_names()
    entries = []
    for i, m in enumerate(models):
        where = f"suite.models[{i}]"
        if isinstance(m, str):
            m = {"family": m}
        if not isinstance(m, dict) or "family" not in m:
            raise SuiteError(f"{where}: expected a mapping with a 'family' (one of {', '.join(valid_models)})")
        family = m["family"]
        if family not in valid_models:
            close = difflib.get_close_matches(str(family), valid_models, n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SuiteError(f"{where}.family: unknown model {family!r}{hint}; valid: {', '.join(valid_models)}")
        extra = {k: v for k, v in m.items() if k not in _ENTRY_KEYS}
        _unknown(extra, [*_ENTRY_KEYS, *field_names(), "layers"], where)
        own = _train_fields(extra, where)
        if any(k in own for k in ("model", "task", "task_config", "d_model", "seed", "name", "out_dir")):
            raise SuiteError(f"{where}: model, task, task_config, d_model (widths), seed (seeds), name and "
                             "out_dir are set by the suite, not per entry")
        merged = {**train, **own}
        lrs = _lrs(merged.pop("lr", 1e-3), f"{where}.lr")
        e_res = {**resources, **dict(m.get("resources") or {})}
        _unknown(e_res, ("gpus", "cpus"), f"{where}.resources")
        label = m.get("name", family)
        if not isinstance(label, str) or not label or not all(c.isalnum() or c in "-_." for c in label):
            raise SuiteError(f"{where}.name: expected a plain name, got {label!r}")
        model_config = dict(m.get("model_config") or {})
        entry = {"family": family, "name": label, "model_config": model_config,
                 "widths": _ints(m.get("widths", widths), f"{where}.widths", 1),
                 "seeds": _ints(m.get("seeds", seeds), f"{where}.seeds", 0),
                 "lrs": lrs, "train": merged, "resources": e_res}
        try:  # every field and value checked now, not when its cell runs
            TrainConfig.from_dict({**merged, "lr": lrs[0], "model": family, "task": task,
                                   "task_config": task_config, "model_config": model_config,
                                   "d_model": entry["widths"][0]})
        except ConfigError as e:
            raise SuiteError(f"{where}: {e}") from None
        entries.append(entry)
    analysis_d = dict(d.get("analysis") or {})
    valid = [f.name for f in dataclasses.fields(AnalysisConfig)]
    _unknown(analysis_d, valid, "suite.analysis")
    analysis = AnalysisConfig(**analysis_d).check()
    return Suite(name, task, task_config, entries, analysis, source=json.loads(json.dumps(d, default=str)))


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(-?\d+|\*)\]")


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """A copy of the suite mapping ``d`` with each ``FIELD=VALUE`` set: FIELD a dotted path
    (``train.steps``, ``models[2].lr``, ``models[*].max_time_s`` for every entry,
    ``widths``), VALUE parsed as YAML (``[16, 32]``, ``1.0e-3``, ``cpu``). Mappings on the
    way are created; list items must exist."""
    import copy

    import yaml

    d = copy.deepcopy(d)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        parts = [(m.group(1), m.group(2)) for m in _PATH_PART.finditer(key)]
        rebuilt = "".join(f".{n}" if n is not None else f"[{i}]" for n, i in parts).lstrip(".")
        if not sep or not parts or rebuilt != key:
            raise SuiteError(f"--set expects FIELD=VALUE with FIELD a dotted path such as train.steps or "
                             f"models[0].lr, got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SuiteError(f"--set {key}: cannot parse the value {text!r}: {e}") from None
        _set(d, parts, value, key)
    return d


def _set(node: Any, parts: list, value: Any, key: str) -> None:
    """Set ``value`` at the path ``parts`` ((name, None) or (None, index | "*")) under ``node``."""
    (name, index), rest = parts[0], parts[1:]
    if name is not None:
        if not isinstance(node, dict):
            raise SuiteError(f"--set {key}: {name!r} is not a field of a mapping here")
        if not rest:
            node[name] = copy_value(value)
            return
        child = node.setdefault(name, [] if rest[0][1] is not None else {})
        _set(child, rest, value, key)
        return
    if not isinstance(node, list):
        raise SuiteError(f"--set {key}: [{index}] indexes a list, but this is not one")
    if index == "*":
        targets = range(len(node))
    elif -len(node) <= int(index) < len(node):
        targets = [int(index)]
    else:
        raise SuiteError(f"--set {key}: no item [{index}] here")
    for i in targets:
        if not rest:
            node[i] = copy_value(value)
            continue
        if isinstance(node[i], str):  # "mamba" stands for {family: mamba}
            node[i] = {"family": node[i]}
        _set(node[i], rest, value, key)


def copy_value(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)  # one value set at several places must not be shared


def load_suite(path: str | Path, overrides: list[str] | None = None) -> Suite:
    """Read and check a suite YAML file (module docstring), with ``overrides``
    (``apply_overrides``: ``["train.steps=50", "widths=[16]"]``) applied first."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SuiteError(f"cannot parse suite file {path}: {e}") from None
    try:
        if overrides:
            if not isinstance(d, dict):
                raise SuiteError(f"a suite is a mapping, got {type(d).__name__}")
            d = apply_overrides(d, overrides)
        return suite_from_dict(d)
    except SuiteError as e:  # name the file the field is in
        raise SuiteError(f"{path}: {e}") from None
