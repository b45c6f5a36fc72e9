"""``ssmlens cache CHECKPOINT``: cache a model's activations on a task into a run store.

    ssmlens cache runs/mamba-ar --n 64 --hooks resid_pre,ssm_state --out runs/mamba-ar-cache
    ssmlens cache runs/mamba-ar/final --task ar --task-arg n_pairs=8 --out runs/x

CHECKPOINT is a checkpoint or a training run directory; the task and its settings
default to the ones the model was trained with (``--task-arg`` updates them).
``--hooks`` takes short names expanded over layers (``resid_pre``, ``ssm_state``,
``attn.hook_out``) or full names; default: every hook point. The run holds the
batch, one array per hook (``cache/<hook name>``) and the config; prints where.
Rows are streamed per ``--batch-size`` examples and each batch is on the store once
it is appended, so an interrupted cache keeps what it computed (an incomplete run).
"""

from __future__ import annotations

import argparse

NAME = "cache"
HELP = "cache a checkpoint's activations on a task into a run store"


def add_common(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``cache`` and ``patch``: checkpoint, task, batch, output."""
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint or training run directory")
    p.add_argument("--task", help="task name (default: the task the model was trained on)")
    p.add_argument("--task-arg", action="append", default=[], metavar="FIELD=VALUE", dest="task_arg",
                   help="task config field, e.g. n_pairs=8 (repeatable; updates the training settings)")
    p.add_argument("--n", type=int, default=64, help="examples (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled batch (default: 0)")
    p.add_argument("--out", required=True, help="run store to write (local path or fsspec URL)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run at --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--hooks", default=None,
                   help="comma-separated hook names, short or full (default: every hook point)")
    p.add_argument("--batch-size", type=int, default=64, dest="batch_size",
                   help="examples per forward; rows are streamed into the store (default: 64)")


def task_args(args) -> dict:
    from ssmlens.interp.cli.train import parse_assignments

    return parse_assignments(args.task_arg, "--task-arg")


def run(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from ssmlens.interp.cli._checks import require_input, writable_run
    from ssmlens.interp.store import create_run
    from ssmlens.interp.tasks import make_task
    from ssmlens.probes.positions import expand_hooks
    from ssmlens.probes.study import load_for_study

    require_input(args.checkpoint, "checkpoint")
    model, ckpt, task, settings = load_for_study(args.checkpoint, args.task, task_args(args))
    names = None if args.hooks is None else [s.name for s in expand_hooks(model, args.hooks)]
    batch = make_task(task, **settings).sample(args.n, args.seed)
    writable_run(args.out, args.overwrite)
    config = {"kind": "cache", "checkpoint": str(ckpt), "model_type": model.model_type,
              "model_config": model.config_dict(), "task": task, "task_config": settings,
              "n_examples": args.n, "seed": args.seed, "hooks": names or "all"}
    with create_run(args.out, config, overwrite=args.overwrite) as w:
        w.set_checkpoint(str(ckpt))
        w.write_batch(batch)
        n_hooks = 0
        # Each append is on the store when it returns: a killed run keeps every batch
        # cached so far (readable with open_run(out, require_complete=False)).
        for start in tqdm(range(0, args.n, args.batch_size), desc="caching", disable=not args.progress):
            with torch.no_grad():
                _, cache = model.run_with_cache(batch.tokens[start : start + args.batch_size],
                                                names_filter=names)
            w.append_cache({k: v for k, v in cache.items()})
            n_hooks = len(cache)
        url = w.url
    print(f"cached {n_hooks} hooks x {args.n} examples of {model.model_type} on {task}")
    print(f"wrote run store: {url}")
    return 0
