"""``TrainConfig``: every setting of a training run, from code, a YAML/JSON file or the CLI.

A config file holds the same keys as the dataclass (``-`` and ``_`` are both
accepted, and ``layers`` is an alias of ``n_layers``, as on the command line)::

    model: mamba
    task: ar
    task_config: {n_keys: 64, n_values: 64, n_pairs: 8}
    d_model: 64
    layers: 2
    model_config: {d_state: 16}
    steps: 2000
    lr: 3.0e-3

Unknown keys and bad values raise ``ConfigError`` naming the field and the valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Fields that may change between a run and its resumption without changing what is
# trained (a longer run, more frequent evals, another device); any other difference
# means the checkpoint belongs to another experiment.
RESUMABLE_CHANGES = frozenset({
    "steps", "eval_every", "eval_batch_size", "checkpoint_every", "keep_checkpoints",
    "stop_at_acc", "max_time_s", "device", "progress", "out_dir", "resume", "overwrite", "log_every",
})
_ALIASES = {"layers": "n_layers"}
_FLOAT_FIELDS = frozenset({
    "lr", "min_lr_ratio", "weight_decay", "beta1", "beta2", "grad_clip", "aux_loss_weight", "stop_at_acc",
    "max_time_s",
})


class ConfigError(ValueError):
    """A training config with an unknown field or an invalid value."""


@dataclass
class TrainConfig:
    """One training run. ``model_config``/``task_config`` go to the registry's model
    config and the task (``vocab_size`` is always taken from the task)."""

    model: str = "transformer"
    task: str = "ar"
    task_config: dict[str, Any] = field(default_factory=dict)
    d_model: int = 64
    n_layers: int = 2
    model_config: dict[str, Any] = field(default_factory=dict)
    # optimisation
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float | None = 1.0  # max global grad norm; None disables clipping
    aux_loss_weight: float = 1.0  # multiplies the sum of the model's auxiliary losses
    # "mask": loss on the task's supervised positions (its loss_mask); "all": next-token
    # loss at every position (as Arora et al.'s tinylang trains AR). Accuracy is always
    # measured at the supervised positions.
    supervise: str = "mask"
    seed: int = 0
    # evaluation, logging, checkpoints
    eval_every: int = 200
    eval_size: int = 1000
    eval_batch_size: int = 500
    stop_at_acc: float | None = None  # stop once held-out answer accuracy reaches this
    max_time_s: float | None = None  # stop (evaluated, checkpointed) after this much training time
    log_every: int = 10  # steps between progress-bar updates (each costs a device sync)
    checkpoint_every: int | None = None  # None: at every eval
    keep_checkpoints: int = 2  # step checkpoints kept (final/ and best/ are kept apart)
    name: str | None = None  # run name; None: "<model>-<task>"
    out_dir: str = "runs"
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    resume: bool = True  # continue from the run's last checkpoint when there is one
    overwrite: bool = False  # delete an existing run directory first
    progress: bool = True  # tqdm progress bar

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ---------------------------------------------------------
    def validate(self) -> "TrainConfig":
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{name} {rule}, got {getattr(self, name)!r}")

        for name in ("model", "task", "out_dir", "device"):
            need(isinstance(getattr(self, name), str) and getattr(self, name) != "", name, "must be a non-empty string")
        need(self.supervise in ("mask", "all"), "supervise", "must be 'mask' or 'all'")
        for name in ("task_config", "model_config"):
            need(isinstance(getattr(self, name), dict), name, "must be a mapping of field names to values")
        for name in ("d_model", "n_layers", "steps", "batch_size", "eval_every", "eval_size",
                     "eval_batch_size", "log_every", "keep_checkpoints"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        for name in ("warmup_steps", "seed"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "must be an integer >= 0")
        need(self.checkpoint_every is None or (_is_int(self.checkpoint_every) and self.checkpoint_every >= 1),
             "checkpoint_every", "must be None or an integer >= 1")
        need(_is_num(self.lr) and self.lr > 0, "lr", "must be a number > 0")
        need(_is_num(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        need(_is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be a number >= 0")
        for name in ("beta1", "beta2"):
            need(_is_num(getattr(self, name)) and 0 <= getattr(self, name) < 1, name, "must be in [0, 1)")
        need(self.grad_clip is None or (_is_num(self.grad_clip) and self.grad_clip > 0),
             "grad_clip", "must be None or a number > 0")
        need(_is_num(self.aux_loss_weight) and self.aux_loss_weight >= 0, "aux_loss_weight", "must be a number >= 0")
        need(self.stop_at_acc is None or (_is_num(self.stop_at_acc) and 0 < self.stop_at_acc <= 1),
             "stop_at_acc", "must be None or in (0, 1]")
        need(self.max_time_s is None or (_is_num(self.max_time_s) and self.max_time_s > 0),
             "max_time_s", "must be None or a number of seconds > 0")
        need(self.name is None or (isinstance(self.name, str) and _safe_name(self.name)),
             "name", "must be a plain directory name (letters, digits, '-', '_', '.')")
        for name in ("resume", "overwrite", "progress"):
            need(isinstance(getattr(self, name), bool), name, "must be true or false")
        clash = sorted({"vocab_size", "d_model", "n_layers"} & set(self.model_config))
        if clash:
            raise ConfigError(
                f"model_config must not set {clash}: vocab_size comes from the task, "
                "d_model and n_layers are top-level fields")
        return self

    # -- derived -------------------------------------------------------------
    @property
    def run_name(self) -> str:
        return self.name or f"{self.model}-{self.task}"

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.run_name

    @property
    def checkpoint_interval(self) -> int:
        return self.checkpoint_every or self.eval_every

    # -- (de)serialisation ----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a mapping; keys may use ``-`` or ``_`` and the ``layers`` alias."""
        if not isinstance(values, dict):
            raise ConfigError(f"a training config must be a mapping, got {type(values).__name__}")
        return cls(**coerce_numbers(normalize_keys(values)))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **normalize_keys(changes))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    def differences(self, other: "TrainConfig") -> list[str]:
        """Fields (outside ``RESUMABLE_CHANGES``) whose values differ from ``other``."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in RESUMABLE_CHANGES and a[k] != b.get(k)]


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def normalize_keys(values: dict[str, Any]) -> dict[str, Any]:
    """Map ``d-model``/``layers`` spellings to field names; unknown keys raise ConfigError."""
    valid = field_names()
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        name = _ALIASES.get(name, name)
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown training config field {key!r}{hint}; valid fields: {', '.join(valid)}")
        if name in out:
            raise ConfigError(f"training config field {name!r} is given twice (as {key!r})")
        out[name] = value
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a ``.yaml``/``.yml``/``.json`` config file (keys not yet checked)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as e:  # yaml and json raise different types; both mean "unreadable"
        raise ConfigError(f"cannot parse config file {path}: {e}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of fields, got {type(values).__name__}")
    return values


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """A ``TrainConfig`` from a YAML/JSON file, with keyword overrides applied on top."""
    values = normalize_keys(load_config_file(path))
    values.update(normalize_keys(overrides))
    return TrainConfig(**coerce_numbers(values))


def coerce_numbers(values: dict[str, Any]) -> dict[str, Any]:
    """Turn strings such as ``"1e-3"`` into floats for float fields: YAML 1.1 (PyYAML)
    reads an exponent without a dot as a string, and ``lr: 1e-3`` is what people write."""
    out = dict(values)
    for name in _FLOAT_FIELDS & set(out):
        if isinstance(out[name], str):
            try:
                out[name] = float(out[name])
            except ValueError:
                pass  # left as a string: validate() names the field
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _safe_name(name: str) -> bool:
    return name not in (".", "..") and all(c.isalnum() or c in "-_." for c in name)
