"""``ssmlens probe``: linear probes on a checkpoint's activations, per layer × position.

    ssmlens probe runs/mamba-ar --hooks resid_pre,ssm_state --target queried_value --out runs/p
    ssmlens probe CKPT --task ar --task-arg n_pairs=8 --positions query,queried_value,eos

The task defaults to the one the checkpoint was trained on (its ``train_config.json``).
Writes a run store at ``--out``: the batch, ``results/probe/accuracy`` (dims hook,
layer, position, metric) and the tidy table ``probe``; prints where.
"""

from __future__ import annotations

import argparse

from ssmlens.interp.cli import UsageError

NAME = "probe"
HELP = "fit linear probes on a checkpoint's activations (accuracy per layer x position) into a run store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory or training run directory")
    p.add_argument("--out", required=True, help="run store to write (local path or fsspec URL)")
    p.add_argument("--task", default=None, help="task name (default: the checkpoint's training task)")
    p.add_argument("--task-arg", action="append", default=[], metavar="FIELD=VALUE",
                   help="task config field, e.g. n_pairs=8 (repeatable; default: the training config)")
    p.add_argument("--n", type=int, default=512, help="examples (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch and of the train/test split")
    p.add_argument("--hooks", default="resid_pre", help="comma-separated hook kinds or names, e.g. resid_pre,ssm_state")
    p.add_argument("--target", default="queried_value", help="role whose token is the label (default queried_value)")
    p.add_argument("--positions", default="all", help="'all' or comma-separated positions / role names (query,eos,5)")
    p.add_argument("--method", default="ridge", choices=["ridge", "logistic"], help="probe fitter (default ridge)")
    p.add_argument("--no-control", dest="control", action="store_false", help="skip the control task")
    p.add_argument("--test-frac", type=float, default=0.25, help="held-out fraction (default 0.25)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per forward pass")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run at --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def check_hooks(model, hooks: str) -> None:
    """UnknownHookError, with close matches, for a spec that names no hook of ``model``
    (as ``probe_sweep`` reads specs: full names or kinds)."""
    from ssmlens.probes.linear_sweep import resolve_hooks
    from ssmlens.probes.positions import unknown_hook

    names = list(model.hook_dict)
    for spec in filter(None, (h.strip() for h in hooks.split(","))):
        try:
            resolve_hooks(names, spec)
        except ValueError:
            raise unknown_hook(spec, names) from None


def run(args) -> int:
    import torch

    from ssmlens.interp.cli._checks import require_input, writable_run
    from ssmlens.interp.cli.train import parse_assignments
    from ssmlens.interp.store import create_run
    from ssmlens.interp.tasks import make_task
    from ssmlens.probes.ablation_spec import _load_checkpoint
    from ssmlens.probes.linear_sweep import probe_sweep, sweep_table, target_labels

    require_input(args.checkpoint, "checkpoint")
    if args.positions != "all" and not args.positions.strip():
        raise UsageError("--positions names no position")
    model = _load_checkpoint(args.checkpoint).to(args.device).eval()
    check_hooks(model, args.hooks)
    task_name, task_cfg = args.task, {}
    try:
        from ssmlens.interp.training.checkpointing import find_train_config, resolve_checkpoint

        trained = find_train_config(resolve_checkpoint(args.checkpoint)) or {}
    except ImportError:
        trained = {}
    if task_name is None or task_name == trained.get("task"):
        task_name = task_name or trained.get("task")
        task_cfg = dict(trained.get("task_config") or {})
    if task_name is None:
        raise UsageError(f"give --task: the checkpoint {args.checkpoint} has no training config naming one")
    task_cfg.update(parse_assignments(args.task_arg, "--task-arg"))
    batch = make_task(task_name, **task_cfg).sample(args.n, args.seed)
    positions = args.positions if args.positions == "all" else [
        int(p) if p.strip().lstrip("-").isdigit() else p.strip() for p in args.positions.split(",") if p.strip()]
    target_labels(batch, args.target)  # an unknown role fails here (with close matches), before any work
    writable_run(args.out, args.overwrite)
    with torch.no_grad():  # scoped: the CLI also runs in-process (tests, notebooks)
        da = probe_sweep(model, batch, args.hooks, args.target, positions, method=args.method,
                         control=args.control, test_frac=args.test_frac, seed=args.seed,
                         batch_size=args.batch_size, progress=args.progress)
    config = {"kind": "probe", "checkpoint": str(args.checkpoint), "task": task_name, "task_config": task_cfg,
              "n": args.n, "seed": args.seed, "hooks": args.hooks, "target": args.target,
              "positions": args.positions, "method": args.method, "control": args.control,
              "test_frac": args.test_frac}
    table = sweep_table(da)
    best = {}
    for hook in da.hook.values:
        acc = da.sel(hook=hook, metric="test_acc")
        if bool(acc.notnull().any()):
            best[f"best_test_acc/{hook}"] = float(acc.max())
    with create_run(args.out, config, overwrite=args.overwrite) as w:
        w.set_checkpoint(str(args.checkpoint))
        w.write_batch(batch)
        w.write_result("probe/accuracy", da)
        w.write_table("probe", table)
        w.set_metrics(best)
    for k, v in best.items():
        print(f"  {k.split('/', 1)[1]:28s} best held-out accuracy {v:.3f}")
    print(f"wrote probe run store: {args.out}")
    return 0
