"""``ssmlens eval CHECKPOINT``: answer accuracy of a trained model on a task.

CHECKPOINT is a checkpoint directory (``runs/x/final``, ``runs/x/checkpoints/step_000400``)
or a run directory (its ``final/``, else its last checkpoint). By default the task,
its settings and the held-out set are the ones the model was trained with, so the
numbers match ``metrics.jsonl``; ``--task``/``--task-arg``/``--seed`` evaluate elsewhere.

    ssmlens eval runs/mamba-ar
    ssmlens eval runs/mamba-ar/final --task ar --task-arg n_pairs=16 --n 2000 --json
"""

from __future__ import annotations

import argparse
import json

NAME = "eval"
HELP = "evaluate a checkpoint's answer accuracy on a task"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint or run directory")
    p.add_argument("--task", help="task name (default: the task the model was trained on)")
    p.add_argument("--task-arg", action="append", default=[], metavar="FIELD=VALUE",
                   help="task config field, e.g. n_pairs=16 (repeatable; on top of the training settings "
                        "when the task is the training task)")
    p.add_argument("--n", type=int, default=None, help="examples (default: the run's eval_size, else 1000)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the evaluation set (default: the run's held-out set)")
    p.add_argument("--batch-size", type=int, default=500, dest="batch_size")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def evaluate_checkpoint(path, task: str | None = None, task_args: dict | None = None, n: int | None = None,
                        seed: int | None = None, batch_size: int = 500, device: str = "auto") -> dict:
    """Metrics of the checkpoint at ``path`` (see the module docstring for the defaults)."""
    from ssmlens.interp.training.checkpointing import find_train_config, resolve_checkpoint
    from ssmlens.interp.training.data import build_task, derive_seed, eval_seed
    from ssmlens.interp.training.evaluate import evaluate
    from ssmlens.interp.training.optim import resolve_device
    from ssmlens.models.checkpoint import load_model

    ckpt = resolve_checkpoint(path)
    trained = find_train_config(ckpt) or {}
    same_task = task is None or task == trained.get("task")
    task = task or trained.get("task")
    if task is None:
        raise ValueError(f"{ckpt} has no train_config.json naming its task; pass --task")
    settings = {**(trained.get("task_config", {}) if same_task else {}), **(task_args or {})}
    if seed is None:
        # the run's held-out set when evaluating the training task, else a fixed fresh one
        seed = eval_seed(trained.get("seed", 0)) if same_task and not task_args else derive_seed("eval", task)
    n = n or trained.get("eval_size", 1000)
    dev = resolve_device(device)
    model = load_model(ckpt, device=dev)
    batch = build_task(task, settings).sample(n, seed=seed)
    if batch.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"task {task!r} uses {batch.vocab_size} token ids but the model has vocab_size "
                         f"{model.cfg.vocab_size}; evaluate on the task settings it was trained with")
    metrics = evaluate(model, batch, batch_size=batch_size, device=dev)
    return {"checkpoint": str(ckpt), "model": model.model_type, "task": task, "task_config": settings,
            "seed": seed, **metrics}


def run(args: argparse.Namespace) -> int:
    from ssmlens.interp.cli._checks import require_input
    from ssmlens.interp.cli.train import parse_assignments

    require_input(args.checkpoint, "checkpoint")
    result = evaluate_checkpoint(
        args.checkpoint, task=args.task, task_args=parse_assignments(args.task_arg, "--task-arg"),
        n=args.n, seed=args.seed, batch_size=args.batch_size, device=args.device)
    if args.json:
        print(json.dumps(result))
    else:
        settings = ", ".join(f"{k}={v}" for k, v in result["task_config"].items()) or "defaults"
        print(f"{result['checkpoint']}: {result['model']} on {result['task']} ({settings})")
        print(f"  answer accuracy {result['acc']:.4f}  sequence accuracy {result['seq_acc']:.4f}  "
              f"loss {result['loss']:.4f}  ({result['n_examples']} examples, {result['n_answers']} answers)")
    return 0
