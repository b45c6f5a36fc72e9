"""``ssmlens patch CHECKPOINT``: an activation-patching sweep written to a run store.

    ssmlens patch runs/mamba-ar --hooks resid_pre,ssm_state --positions all --out runs/mamba-ar-patch
    ssmlens patch runs/tf-ar --positions queried_key,queried_value,query,last --direction noise --out runs/y

Samples the task the model was trained on (``--task``/``--task-arg`` to change it),
corrupts it (``--corrupt value``: the queried pair's value; ``key``: its key) and
patches every hook site × position unit (``ssmlens.probes.patching``), batched. Positions:
``all`` (each position), ``*`` (all at once), or a comma list of ints and roles.
``--attribution`` adds attribution patching over the same sites. Writes
``results/patching/<kind>`` (dims metric, layer, pos|role), ``tables/patching``,
the batch, the corrupted tokens and the baselines; prints the strongest sites and
where the run is.

``--shards K`` splits the examples into K prompt shards, each an engine cell that writes
its own run (``<out>.cells/shard-i-of-k``); the coordinator merges their sums into the
same results as one sweep over all examples (``ssmlens.probes.patching_shards``) and
links the shard runs in its metrics. With ``--engine ray`` the shards run side by side;
a re-run skips the finished shards.
"""

from __future__ import annotations

import argparse
import sys

NAME = "patch"
HELP = "activation patching sweep (hooks x layers x positions) into a run store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ssmlens.interp.cli.cache import add_common

    add_common(p)
    p.add_argument("--hooks", default=None,
                   help="comma-separated hook names, short or full (default: resid_pre plus the model's "
                        "memory: ssm_state, attn.hook_out, memory.hook_write)")
    p.add_argument("--positions", default="all",
                   help="all (default), * (every position at once), or a comma list of ints and roles "
                        "(queried_key,queried_value,query,last,key[0],...)")
    p.add_argument("--corrupt", default="value", choices=["value", "key"], help="corruption (default: value)")
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"],
                   help="denoise: clean into corrupted (default); noise: corrupted into clean")
    p.add_argument("--attribution", action="store_true", help="also run attribution patching")
    p.add_argument("--memory-mb", type=float, default=32, dest="memory_mb",
                   help="memory budget of one batched forward (default: 32)")
    p.add_argument("--shards", type=int, default=None,
                   help="split the examples into this many prompt shards, one engine cell each "
                        "(default: 1 shard with --engine ray, no sharding otherwise)")
    from ssmlens.interp.engines.cli import add_engine_arguments

    add_engine_arguments(p)


def parse_positions(text: str):
    """``"all"`` / ``"*"`` / ``"3,5,query"`` -> a ``ssmlens.probes.positions`` spec."""
    text = text.strip()
    if text in ("all", "*"):
        return text if text == "all" else ["*"]
    items = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        items.append(int(part) if part.lstrip("-").isdigit() else part)
    if not items:
        raise ValueError(f"--positions {text!r} names no position")
    return items


def run(args) -> int:
    from ssmlens.interp.cli._checks import require_input, writable_run
    from ssmlens.interp.cli.cache import task_args
    from ssmlens.interp.engines.cli import engine_options, start_engine
    from ssmlens.interp.store import create_run
    from ssmlens.interp.tasks import corrupt, make_task
    from ssmlens.probes.attribution import attribution_patching
    from ssmlens.probes.patching import patching_sweep
    from ssmlens.probes.positions import expand_hooks, resolve_positions
    from ssmlens.probes.study import _one_kind, default_hooks, kind_key, load_for_study, tidy

    require_input(args.checkpoint, "checkpoint")
    model, ckpt, task, settings = load_for_study(args.checkpoint, args.task, task_args(args))
    hooks = args.hooks.split(",") if args.hooks else default_hooks(model)
    expand_hooks(model, hooks)  # unknown names fail here, with suggestions, before any work
    positions = parse_positions(args.positions)
    clean = make_task(task, **settings).sample(args.n, args.seed)
    resolve_positions(positions, clean)  # unknown roles too
    corr = corrupt(clean, args.corrupt, args.seed + 1)
    engine = engine_options(args)
    sharded = args.shards is not None or engine["engine"] != "local"
    config = {"kind": "patching", "checkpoint": str(ckpt), "model_type": model.model_type,
              "model_config": model.config_dict(), "task": task, "task_config": settings,
              "n_examples": args.n, "seed": args.seed, "corruption": args.corrupt, "hooks": hooks,
              "positions": args.positions, "direction": args.direction}
    if sharded:
        from ssmlens.interp.engines import interrupted_run

        if args.attribution:
            raise ValueError("--attribution is not sharded: run it without --shards / --engine ray")
        if engine["gpus_per_task"]:
            raise ValueError("ssmlens patch runs on the CPU: --gpus-per-task does not apply")
        config["shards"] = args.shards or 1
        # the coordinator was stopped while writing its run: the same command replaces it
        args.overwrite = args.overwrite or interrupted_run(args.out, config)
    writable_run(args.out, args.overwrite)
    shard_urls = None
    if sharded:
        from ssmlens.probes.patching_shards import sharded_patching_sweep

        start_engine(engine)
        sweep, shard_urls, failed = sharded_patching_sweep(
            ckpt, task, settings, args.n, args.seed, args.corrupt, hooks, positions, out=args.out,
            shards=args.shards or 1, direction=args.direction, memory_mb=args.memory_mb, engine=engine,
            progress=args.progress)
        if failed:
            for key, error in failed:
                print(f"ssmlens patch: shard {key} failed: {error}", file=sys.stderr)
            print(f"ssmlens patch: {len(failed)} shard(s) failed; re-run the same command to run them "
                  "again (finished shards are kept)", file=sys.stderr)
            return 1
    else:
        sweep = patching_sweep(model, clean, corr, hooks, positions, direction=args.direction,
                               memory_mb=args.memory_mb, progress=args.progress)
    attr = attribution_patching(model, clean, corr, hooks, positions, direction=args.direction) \
        if args.attribution else None
    with create_run(args.out, config, overwrite=args.overwrite) as w:
        w.set_checkpoint(str(ckpt))
        w.write_batch(clean)
        w.write_result("corrupted/tokens", corr.tokens, ("batch", "pos"))
        for kind in sweep["hook"].values.tolist():
            w.write_result(f"patching/{kind_key(kind)}", _one_kind(sweep, kind))
            if attr is not None:
                w.write_result(f"attribution/{kind_key(kind)}", _one_kind(attr, kind))
        table = tidy(sweep)
        w.write_table("patching", table)
        if attr is not None:
            w.write_table("attribution", tidy(attr))
        w.set_metrics({k: v for k, v in sweep.attrs.items() if k.startswith(("clean_", "corrupted_"))})
        if shard_urls is not None:  # linked, not copied: each shard's run keeps its own data
            w.set_metrics(shards=shard_urls)
        url = w.url
    a = sweep.attrs
    print(f"{model.model_type} on {task} ({args.n} examples, {args.corrupt} corruption, {args.direction}): "
          f"p(answer) clean {a['clean_p_answer']:.3f}, corrupted {a['corrupted_p_answer']:.3f}")
    unit = "pos" if "pos" in table.columns else "role"
    top = table.dropna(subset=["restored"]).sort_values("restored", ascending=False).head(5)
    for _, r in top.iterrows():
        label = f" {r['pos_label']}" if "pos_label" in r else ""
        print(f"  {r['hook']:<24} L{int(r['layer'])} {unit} {r[unit]}{label}: restored {r['restored']:.3f}")
    print(f"wrote run store: {url}")
    return 0
