"""``ssmlens demo``: the main job on local defaults, on the CPU.

1. trains (or reuses) the demo models on a small associative-recall setting
   (``ssmlens.interp.demo_train``), under ``runs/``;
2. runs the AR patching study on each (``ssmlens.probes.study.run_patching_study``): clean
   vs. value-corrupted runs, every layer × position of the residual stream and of the
   model's memory (SSM states, attention outputs), attribution patching, a cached
   clean run — one run store per model under ``runs/demo/``;
3. prints the accuracies and, per model, which component and position restores the
   answer most;
4. serves the dashboard on those runs (``--no-serve`` to stop after step 3).

Every step reuses finished work, so a second ``make demo`` goes straight to the
dashboard.
"""

from __future__ import annotations

NAME = "demo"
HELP = "train the demo models, run the AR patching study, serve the dashboard"


def add_arguments(parser) -> None:
    parser.add_argument("--runs", default="runs", help="directory for checkpoints and run stores (default: runs)")
    parser.add_argument("--examples", type=int, default=64, help="AR examples in each patching study")
    parser.add_argument("--port", type=int, default=8050, help="dashboard port (default: 8050)")
    parser.add_argument("--no-serve", action="store_true", help="stop after writing the run stores")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _study(checkpoint, out, examples: int, progress: bool = True) -> str:
    """Run the patching study unless a complete store of this checkpoint (same path and
    same weights: a demo with new settings retrains at the same path) is there."""
    from ssmlens.interp.store import StoreError, open_run
    from ssmlens.models.checkpoint import weights_digest
    from ssmlens.probes.study import run_patching_study

    try:
        run = open_run(out)
        if (run.config.get("checkpoint") == str(checkpoint) and run.config.get("n_examples") == examples
                and run.config.get("checkpoint_sha256") == weights_digest(checkpoint)):
            return str(out)
    except StoreError:
        pass
    return run_patching_study(checkpoint, str(out), n_examples=examples, overwrite=True, progress=progress)


def _strongest(store: str) -> list[str]:
    """One line per hook kind: where restoring the clean value helps most."""
    from ssmlens.interp.store import open_run

    run = open_run(store)
    lines = []
    for name in sorted(r for r in run.results() if r.startswith("patching_roles/")):
        da = run.result(name).sel(metric="restored")
        best = da.where(da.notnull(), -1e9).argmax(...)
        layer, role = int(da.layer[best["layer"]]), str(da.role[best["role"]].item())
        lines.append(f"{name.split('/', 1)[1]:18s} best: layer {layer}, {role:14s} restores "
                     f"{float(da.isel(best)):6.1%} of p(answer)")
    return lines


def run(args) -> int:
    from pathlib import Path

    from ssmlens.interp.cli import UsageError
    from ssmlens.interp.cli._checks import writable_dir
    from ssmlens.interp.demo_train import train_demo_models

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    if args.examples < 1:
        raise UsageError(f"--examples must be at least 1, got {args.examples}")
    runs = Path(args.runs)
    writable_dir(runs, "--runs")
    print(f"== 1. training the demo models on the CPU (checkpoints under {runs}/)")
    trained = train_demo_models(out_dir=runs, progress=args.progress)
    print("\n== 2. AR patching study (clean value -> corrupted run), one run store per model")
    stores = {}
    for name, (checkpoint, acc) in trained.items():
        stores[name] = _study(checkpoint, runs / "demo" / name, args.examples, args.progress)
    print("\n== 3. results")
    for name, (checkpoint, acc) in trained.items():
        print(f"{name}: answer accuracy {acc:.1%}  (checkpoint {checkpoint})")
        for line in _strongest(stores[name]):
            print(f"    {line}")
        print(f"    run store: {stores[name]}")
    if args.no_serve:
        return 0
    print(f"\n== 4. dashboard on {runs}/ (Ctrl+C to stop)")
    from ssmlens.interp.cli.dash import serve

    return serve(str(runs), "127.0.0.1", args.port)
