"""``ssmlens ablate``: run an ablation study (models × tasks × ablations) from a YAML file.

    ssmlens ablate examples/ablation_study.yaml --out runs/a
    ssmlens ablate examples/ablation_study.yaml --out runs/a --engine ray --gpus-per-task 0.25

The format is described in ``ssmlens.probes.ablation_study``. Re-running with the same
``--out`` evaluates only the cells not finished yet. Prints the accuracy table and
where the run store is. ``--engine ray`` runs each cell as a Ray task
(``ssmlens.interp.engines``); a cell that still fails after ``--retries`` is listed, its
values are NaN, and the command exits with status 1 (a re-run evaluates it again).
"""

from __future__ import annotations

import argparse

NAME = "ablate"
HELP = "run an ablation study YAML (models x tasks x ablations) into a run store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study YAML file")
    p.add_argument("--out", required=True, help="run store to write (local path or fsspec URL)")
    p.add_argument("--overwrite", action="store_true", help="start afresh, replacing finished cells at --out")
    p.add_argument("--device", default=None, help="override the study's device (cpu, cuda, ...)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    from ssmlens.interp.engines.cli import add_engine_arguments

    add_engine_arguments(p)


def run(args) -> int:
    import warnings

    from ssmlens.interp.cli._checks import require_input, writable_dir
    from ssmlens.interp.engines.cli import engine_options, start_engine
    from ssmlens.probes.ablation_study import AblationSkipped, load_study, run_study

    require_input(args.study, "study file")
    study = load_study(args.study)  # StudyError (a ValueError) names the file and the field
    engine = engine_options(args)  # EngineError: the engine flags cannot work together
    writable_dir(args.out, "--out")  # a run there is resumed, not refused
    if args.device:
        study.device = args.device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AblationSkipped)  # listed below instead
        start_engine(engine)
        table = run_study(study, args.out, progress=args.progress, overwrite=args.overwrite, engine=engine)
    skipped = table.attrs.get("skipped") or []
    if skipped:
        print(f"skipped {len(skipped)} cell(s) whose ablation does not apply to the model:")
        for s in skipped:
            print(f"  {s['model']} / {s['task']} / {s['ablation']}: {s['reason']}")
    for metric in study.metrics:
        part = table[table["metric"] == metric]
        if not part.empty:
            wide = part.pivot_table(index="ablation", columns=["model", "task"], values="value", sort=False)
            print(f"\n{metric}:\n{wide.round(4).to_string()}")
    failed = table.attrs.get("failed") or []
    if failed:
        print(f"\n{len(failed)} cell(s) failed (NaN above; re-run the same command to evaluate them again):")
        for f in failed:
            print(f"  {f['model']} / {f['task']} / {f['ablation']}: {f['error']}")
    print(f"\nwrote ablation run store: {args.out}")
    return 1 if failed else 0
