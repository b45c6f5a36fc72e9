"""The list of runs under the runs directory, one summary row each (the Runs page, the
run selector and the Compare page).

Rows come from ``ssmlens.interp.store.list_runs``, which reads only each run's ``zarr.json``,
so listing stays cheap however large the runs are. Config keys are read tolerantly:
a run written by an older or a hand-made script may lack any of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ssmlens.dashboards.reader import Reader, RunAccessError
from ssmlens.interp.store import StoreError, list_runs

# metrics keys that hold the model's accuracy, first found wins; "clean_accuracy" is what
# patching studies and `ssmlens patch` record (the answer accuracy of the unpatched clean run)
ACCURACY_KEYS = ("accuracy", "acc", "test_acc", "eval_acc", "val_acc", "answer_acc", "clean_accuracy")
MODEL_KEYS = ("model_type", "model", "model_name", "architecture")


@dataclass
class RunRow:
    run_id: str
    status: str  # "complete" | "incomplete" | "corrupt" | "refused"
    model: str
    task: str
    kind: str
    accuracy: float | None
    created: str
    note: str  # why a run is not opened (incomplete / corrupt / refused)

    @property
    def openable(self) -> bool:
        return self.status == "complete"

    def label(self) -> str:
        """The run selector's label: id, model and task, and the state when not whole."""
        parts = [self.run_id]
        details = " · ".join(x for x in (self.model, self.task) if x and x != "?")
        if details:
            parts.append(f"({details})")
        if not self.openable:
            parts.append(f"[{self.status.upper()}]")
        return " ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy"] = "" if self.accuracy is None else round(float(self.accuracy), 4)
        d["id"] = self.run_id  # DataTable row id
        return d


def _first(summary: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if summary.get(key) not in (None, ""):
            return summary[key]
    return None


def _accuracy(metrics: dict[str, Any]) -> float | None:
    for key in ACCURACY_KEYS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def list_rows(reader: Reader) -> tuple[list[RunRow], str | None]:
    """Every run under the runs directory, and a message when the listing itself fails."""
    try:
        infos = list_runs(reader.root)
    except StoreError as e:
        return [], f"cannot list runs in {reader.runs_dir}: {e}"
    rows = []
    for info in infos:
        summary = info.config_summary or {}
        status, note = info.status, info.error or ""
        if status == "complete":
            try:
                reader.resolve(info.run_id)
            except RunAccessError as e:
                status, note = "refused", str(e)
        elif status == "incomplete":
            note = "writer stopped before finishing" + (f": {note}" if note else "")
        task = _first(summary, ("task", "task_name", "task.name")) or ""
        rows.append(RunRow(
            run_id=info.run_id, status=status,
            model=str(_first(summary, MODEL_KEYS) or "?"),
            task=str(task) or "?", kind=str(summary.get("kind") or ""),
            accuracy=_accuracy(info.metrics or {}),
            created=(info.created_at or "")[:19].replace("T", " "),
            note=note[:300],
        ))
    message = None if rows else f"no runs under {reader.runs_dir} yet (`ssmlens demo` writes some)"
    return rows, message


def run_options(rows: list[RunRow]) -> list[dict[str, Any]]:
    """Dropdown options: every run, those that cannot be opened disabled."""
    return [{"label": r.label(), "value": r.run_id, "disabled": not r.openable} for r in rows]


def default_run(rows: list[RunRow]) -> str | None:
    return next((r.run_id for r in rows if r.openable), None)


def family(reader: Reader, run_id: str) -> str:
    """"mamba", "transformer", "bmojo", "moe_mamba", "based", "h3", "hyena" or "other": from
    the config, else from which hooks were cached (mixer and attention: B'MOJO; mixer
    only: Mamba)."""
    config = reader.config(run_id)
    name = next((config.get(k) for k in MODEL_KEYS if isinstance(config.get(k), str)), "")
    name = name.lower().replace("-", "_").replace("'", "")
    for known in ("moe_mamba", "bmojo", "mamba", "transformer", "based", "h3", "hyena"):
        if known in name:
            return known
    hooks = reader.hooks(run_id)
    mixer = any(".mixer." in h for h in hooks)
    attn = any(".attn." in h for h in hooks)
    if mixer and attn:
        return "bmojo"
    return "mamba" if mixer else "transformer" if attn else "other"


def model_config(reader: Reader, run_id: str) -> dict[str, Any]:
    """The model's config: ``config["model_config"]`` when recorded, else the checkpoint's
    ``config.json`` (read as JSON; no model is built)."""
    config = reader.config(run_id)
    mc = config.get("model_config")
    if isinstance(mc, dict) and mc:
        return mc
    try:
        import json

        path = reader.weights_path(run_id).parent / "config.json"
        meta = json.loads(path.read_text())
        return dict(meta.get("config") or {})
    except (RunAccessError, OSError, ValueError):
        return {}


def stable_roles(reader: Reader, run_id: str, max_examples: int = 64) -> list[str]:
    """Per position, its role when every example agrees (MQAR's context pairs sit at fixed
    positions), else "": labels for the position axis of results averaged over examples."""
    def compute() -> list[str]:
        n, L, _ = reader.batch_shape(run_id)
        labels = None
        for i in range(min(n, max_examples)):
            roles = reader.example(run_id, i).role_of()
            labels = roles if labels is None else [a if a == b else "" for a, b in zip(labels, roles)]
        return [r if r in ("key", "value", "query", "answer") else "" for r in (labels or [])]

    return reader.derived(run_id, ("stable_roles", max_examples), compute)


def position_labels(positions, roles: list[str]) -> list[str]:
    """"12 k" for a position whose role is known (k, v, q, a), else "12"."""
    out = []
    for p in positions:
        try:
            i = int(str(p))
        except ValueError:
            out.append(str(p))
            continue
        role = roles[i] if 0 <= i < len(roles) else ""
        out.append(f"{i} {role[0]}" if role else str(i))
    return out
