"""``ssmlens cache CHECKPOINT``: cache a model's activations on a task into a run store.

    ssmlens cache runs/mamba-ar --n 64 --hooks resid_pre,ssm_state --out runs/mamba-ar-cache
    ssmlens cache runs/mamba-ar/final --task ar --task-arg n_pairs=8 --out runs/x

CHECKPOINT is a checkpoint or a training run directory; the task and its settings
default to the ones the model was trained with (``--task-arg`` updates them).
With ``--prompts`` (a text prompt set: ``repeated_tokens``, ``fact_recall``) CHECKPOINT
is any local checkpoint ``ssmlens.load_model`` reads (Hugging Face directories too):

    ssmlens cache path/to/mamba-130m-hf --prompts repeated_tokens --seq-len 1024 --n 1000 \
        --token-budget 65536 --hooks delta --positions query --dtype bfloat16 --out runs/m130

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
    from ssmlens.interp.cli import _cache_text

    _cache_text.add_arguments(p)


def task_args(args) -> dict:
    from ssmlens.interp.cli.train import parse_assignments

    return parse_assignments(args.task_arg, "--task-arg")


def run(args) -> int:
    import time

    import torch
    from tqdm.auto import tqdm

    from ssmlens.interp.cli import _cache_text as text
    from ssmlens.interp.cli._checks import require_input, writable_run
    from ssmlens.interp.hook_names import dims_for, has_batch_axis
    from ssmlens.interp.store import create_run
    from ssmlens.interp.tasks import make_task
    from ssmlens.models.loader import parse_dtype
    from ssmlens.probes.positions import expand_hooks
    from ssmlens.probes.study import load_for_study

    require_input(args.checkpoint, "checkpoint")
    if args.prompts:
        model, ckpt, task, settings, batch = text.load_prompt_study(args)
    else:
        model, ckpt, task, settings = load_for_study(args.checkpoint, args.task, task_args(args))
        model = model.to(device=args.device, dtype=parse_dtype(args.dtype))
        batch = make_task(task, **settings).sample(args.n, args.seed)
    names = None if args.hooks is None else [s.name for s in expand_hooks(model, args.hooks)]
    rows = text.rows_per_forward(args, batch.seq_len)
    text.check_role(batch, args.positions)
    config = {"kind": "cache", "checkpoint": str(ckpt), "model_type": model.model_type,
              "model_config": model.config_dict(), "task": task, "task_config": settings,
              "n_examples": args.n, "seed": args.seed, "hooks": names or "all",
              "positions": args.positions or "all", "rows_per_forward": rows}
    device = next(model.parameters()).device
    writable_run(args.out, args.overwrite)
    # Each append is on the store when it returns: a killed run keeps every batch
    # cached so far (readable with open_run(out, require_complete=False)).
    with create_run(args.out, config, overwrite=args.overwrite) as w:
        w.set_checkpoint(str(ckpt))
        w.write_batch(batch)
        n_hooks, started = 0, time.perf_counter()
        bar = tqdm(total=args.n * batch.seq_len, desc="caching", unit="tok", unit_scale=True,
                   disable=not args.progress)
        for start in range(0, args.n, rows):
            stop = min(start + rows, args.n)
            where = batch.roles[args.positions][start:stop] if args.positions else None
            with torch.no_grad():
                _, cache = model.run_with_cache(batch.tokens[start:stop].to(device), names_filter=names)
            # Hyena's filters have no batch axis (the same for every example): written once
            whole = {k: v for k, v in cache.items() if not has_batch_axis(k, v.ndim)}
            entries = {k: text.keep_positions(k, v, where, model.model_type) for k, v in cache.items()
                       if k not in whole}
            if start == 0:  # the arrays are made with this model's axis names (Mamba-2: per head)
                if whole:
                    w.write_cache(whole)
                for k, v in entries.items():
                    w.append(k, v, dims=dims_for(k, v.ndim, model.model_type))
            else:
                w.append_cache(entries)
            n_hooks = len(cache)
            bar.update((stop - start) * batch.seq_len)
        bar.close()
        seconds = time.perf_counter() - started
        w.set_metrics(tokens=args.n * batch.seq_len, seconds=seconds,
                      tokens_per_second=args.n * batch.seq_len / seconds)
        url = w.url
    print(f"cached {n_hooks} hooks x {args.n} examples of {model.model_type} on {task}: "
          f"{args.n * batch.seq_len} tokens in {seconds:.1f} s, {args.n * batch.seq_len / seconds:,.0f} tokens/s")
    print(f"wrote run store: {url}")
    return 0
