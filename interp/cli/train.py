"""``ssmlens train``: train any registered model on any task, from flags or a config file.

    ssmlens train --model mamba --task ar --d-model 64 --layers 2 --steps 3000
    ssmlens train --config run.yaml --lr 3e-3        # flags override the file
    ssmlens train --model transformer --task ar --task-arg n_keys=64 --task-arg n_pairs=8
    ssmlens train --task ar --grid model=mamba,transformer --grid lr=1e-3,3e-3 --engine ray --gpus-per-task 0.25

The run goes to ``<out-dir>/<name>/`` (default ``runs/<model>-<task>/``): checkpoints,
``metrics.jsonl``, ``final/`` and ``best/``. Running the same command again resumes
from the last checkpoint (or returns at once when the run is finished). SIGTERM or
Ctrl+C saves a checkpoint after the current step and exits with 128 + the signal's
number (143, 130): the next run resumes from there.

``--grid FIELD=V1,V2,...`` (repeatable; or ``grid:`` in the config file) trains every
combination, one run each, as engine cells (``--engine ray`` side by side, see
``ssmlens.interp.training.grid``); finished points are skipped on a re-run.
"""

from __future__ import annotations

import argparse
import sys

NAME = "train"
HELP = "train a model on a task (checkpoints and metrics go to runs/<name>/)"

# TrainConfig fields set by a flag of the same dest (present in args only when given)
_FIELD_FLAGS = (
    "model", "task", "d_model", "n_layers", "steps", "batch_size", "lr", "min_lr_ratio", "warmup_steps",
    "weight_decay", "beta1", "beta2", "grad_clip", "aux_loss_weight", "supervise", "seed", "eval_every", "eval_size",
    "eval_batch_size", "stop_at_acc", "max_time_s", "log_every", "checkpoint_every", "keep_checkpoints",
    "name", "out_dir", "device",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Config flags default to SUPPRESS: an attribute exists only when the flag was
    # given, so flags override the config file and nothing else does.
    p.argument_default = argparse.SUPPRESS
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML or JSON file of TrainConfig fields (flags override it)")
    g = p.add_argument_group("what to train")
    g.add_argument("--model", help="registered model name (e.g. transformer, mamba); default transformer")
    g.add_argument("--task", help="task name (ar, mqar, induction, selective_copy, atr); default ar")
    g.add_argument("--d-model", type=int, dest="d_model", help="model width (default 64)")
    g.add_argument("--layers", "--n-layers", type=int, dest="n_layers", help="number of layers (default 2)")
    g.add_argument("--model-arg", action="append", metavar="FIELD=VALUE",
                   help="any other model config field, e.g. n_heads=4 or d_state=16 (repeatable)")
    g.add_argument("--task-arg", action="append", metavar="FIELD=VALUE",
                   help="task config field, e.g. n_keys=64 (repeatable)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, help="optimizer steps (default 2000)")
    o.add_argument("--batch-size", type=int, dest="batch_size", help="examples per step (default 64)")
    o.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    o.add_argument("--min-lr-ratio", type=float, dest="min_lr_ratio", help="cosine floor as a fraction of lr")
    o.add_argument("--warmup", "--warmup-steps", type=int, dest="warmup_steps", help="linear warm-up steps")
    o.add_argument("--weight-decay", type=float, dest="weight_decay", help="AdamW weight decay")
    o.add_argument("--beta1", type=float)
    o.add_argument("--beta2", type=float)
    o.add_argument("--grad-clip", type=_float_or_none, dest="grad_clip", help="max grad norm ('none' disables)")
    o.add_argument("--aux-loss-weight", type=float, dest="aux_loss_weight",
                   help="weight of the model's auxiliary losses (MoE balance, B'MOJO predictor)")
    o.add_argument("--supervise", choices=["mask", "all"],
                   help="loss on the task's supervised positions (mask, default) or on every next token (all)")
    o.add_argument("--seed", type=int, help="seed of the model init and of the data")
    e = p.add_argument_group("evaluation, checkpoints, output")
    e.add_argument("--eval-every", type=int, dest="eval_every", help="steps between held-out evaluations")
    e.add_argument("--eval-size", type=int, dest="eval_size", help="held-out examples")
    e.add_argument("--eval-batch-size", type=int, dest="eval_batch_size")
    e.add_argument("--stop-at-acc", type=float, dest="stop_at_acc", help="stop once eval accuracy reaches this")
    e.add_argument("--max-time", type=float, dest="max_time_s", metavar="SECONDS", help="training time limit")
    e.add_argument("--log-every", type=int, dest="log_every", help="steps between progress-bar updates")
    e.add_argument("--checkpoint-every", type=int, dest="checkpoint_every", help="default: at every eval")
    e.add_argument("--keep-checkpoints", type=int, dest="keep_checkpoints", help="step checkpoints kept")
    e.add_argument("--name", help="run name (default <model>-<task>)")
    e.add_argument("--out-dir", dest="out_dir", help="parent of run directories (default runs)")
    e.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    e.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse to continue an existing run (default: resume it)")
    e.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    e.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    e.add_argument("--print-config", action="store_true", default=False,
                   help="print the resolved config as YAML and exit")
    gr = p.add_argument_group("training grids")
    gr.add_argument("--grid", action="append", metavar="FIELD=V1,V2,...",
                    help="train every combination of these values, one run each (repeatable), e.g. "
                         "--grid model=mamba,transformer --grid lr=1e-3,3e-3 --grid model_config.d_state=8,16")
    from ssmlens.interp.engines.cli import add_engine_arguments

    add_engine_arguments(p)


def _float_or_none(text: str) -> float | None:
    if text.lower() in ("none", "off", "0"):
        return None
    return float(text)


def parse_assignments(items: list[str], flag: str) -> dict:
    """``["n_keys=64", "positional=rotary"]`` -> ``{"n_keys": 64, "positional": "rotary"}`` (YAML-typed)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects FIELD=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value) if value.strip() else None
    return out


def resolve_config(args: argparse.Namespace):
    """The TrainConfig of the command line: file values, then flags on top."""
    from ssmlens.interp.training.config import TrainConfig, coerce_numbers, load_config_file, normalize_keys

    values = normalize_keys({k: v for k, v in load_config_file(args.config).items() if k != "grid"}) \
        if args.config else {}
    given = vars(args)
    for name in _FIELD_FLAGS + ("resume", "overwrite", "progress"):
        if name in given:
            values[name] = given[name]
    for flag, field, dest in (("--model-arg", "model_config", "model_arg"), ("--task-arg", "task_config", "task_arg")):
        if given.get(dest):
            values[field] = {**values.get(field, {}), **parse_assignments(given[dest], flag)}
    return TrainConfig(**coerce_numbers(values))


def check_names(config) -> None:
    """Unknown model or task names fail before anything is built, naming the valid ones."""
    from ssmlens.interp.training.data import task_names
    from ssmlens.models.registry import model_names

    if config.model not in model_names():
        raise ValueError(f"unknown model {config.model!r}; valid models: {', '.join(model_names())}")
    if config.task not in task_names():
        raise ValueError(f"unknown task {config.task!r}; valid tasks: {', '.join(task_names())}")


def resolve_grid(args: argparse.Namespace) -> dict:
    """The grid of the command line: the config file's ``grid:`` mapping, ``--grid`` flags on top."""
    from ssmlens.interp.training.config import load_config_file
    from ssmlens.interp.training.grid import parse_grid, parse_grid_flags

    grid = {}
    if args.config:
        file_grid = load_config_file(args.config).get("grid") or {}
        if not isinstance(file_grid, dict):
            raise ValueError(f"{args.config}: grid must be a mapping FIELD -> list of values")
        grid.update(parse_grid(file_grid))
    grid.update(parse_grid_flags(getattr(args, "grid", None) or []))
    return grid


def run_grid_command(args: argparse.Namespace, config, grid: dict) -> int:
    """``--grid``: every grid point an engine cell; prints the grid's table."""
    from ssmlens.interp.engines.cli import engine_options, start_engine
    from ssmlens.interp.training.grid import expand_grid, run_grid

    # errors (ValueError, EngineError) are reported by the CLI's one error path
    engine = engine_options(args)
    expand_grid(config, grid)  # bad values fail here, before any cell runs
    start_engine(engine)
    gpus = engine["gpus_per_task"]
    if gpus is None:  # a GPU per training unless told to share (--gpus-per-task 0.25)
        gpus = 0.0
        if engine["engine"] == "ray" and config.device != "cpu":
            from ssmlens.interp.engines.ray_engine import cluster_gpus

            gpus = 1.0 if cluster_gpus(engine["address"]) >= 1 else 0.0
    rows, path = run_grid(config, grid, engine={**engine, "gpus_per_task": gpus}, progress=config.progress)
    failed = [r for r in rows if r["status"] != "done"]
    for r in rows:
        values = " ".join(f"{k}={r[k]}" for k in grid)
        print(f"{r['name']:<40} {values:<40} {r['status']:<6} acc {r['acc']:.4f} loss {r['loss']:.4f}"
              + (f"  {r['error']}" if r["error"] else ""))
    print(f"grid table: {path}")
    if failed:
        print(f"{len(failed)} training(s) failed; re-run the same command to train them again", file=sys.stderr)
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    from ssmlens.interp.cli import UsageError
    from ssmlens.interp.cli._checks import require_input, writable_dir

    if getattr(args, "config", None):
        require_input(args.config, "config file")
    try:
        config = resolve_config(args)
        grid = resolve_grid(args)
    except TypeError as e:  # a value of the wrong kind for a field
        raise UsageError(str(e)) from None
    if grid and not args.print_config:
        check_names(config)
        for field in ("model", "task"):
            for value in grid.get(field, []):
                check_names(config.replace(**{field: value}))
        return run_grid_command(args, config, grid)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    check_names(config)
    writable_dir(config.run_dir, "run directory (--out-dir, --name)")
    from ssmlens.interp.training import Trainer

    try:
        trainer = Trainer(config)
    except FileExistsError as e:  # checkpoints there and --no-resume
        raise UsageError(str(e)) from None
    if trainer.resumed_from is not None:
        print(f"resuming {config.run_dir} from {trainer.resumed_from.name} (step {trainer.step})", file=sys.stderr)
    result = trainer.fit()
    if result.signal is not None:
        import signal

        print(f"run {result.run_dir}: stopped by {result.signal} at step {result.step}/{config.steps}; "
              f"checkpoint {result.checkpoint}; run the same command again to resume", file=sys.stderr)
        return 128 + int(signal.Signals[result.signal])
    ev = result.eval
    print(f"run {result.run_dir}: step {result.step}/{config.steps} ({result.stop_reason}), "
          f"eval acc {ev['acc']:.4f}, loss {ev['loss']:.4f}, best acc {result.best_eval.get('acc', float('nan')):.4f}, "
          f"{result.train_time_s:.1f}s, {result.tokens_per_s:.0f} tok/s")
    print(f"checkpoint: {result.checkpoint}")
    print(f"metrics: {result.run_dir / 'metrics.jsonl'}")
    return 0
